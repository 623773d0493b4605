package pki

import (
	"bytes"
	"fmt"
	"path/filepath"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigPath is where the kubeconfig of credential name is stored.
func KubeconfigPath(pkiDir, name string) string {
	return filepath.Join(pkiDir, "kubeconfigs", name+".kubeconfig")
}

// kubeconfigNames lists the identities that get a kubeconfig, in a fixed
// order, with whether they are used from the host (admin) or on nodes.
func kubeconfigNames(c plan.Cluster) (names []string, admin map[string]bool) {
	names = []string{Admin, SuperAdmin, ControllerManager, Scheduler, KubeProxy}
	for _, n := range c.NodesWithRole(spec.RoleWorker) {
		names = append(names, KubeletClient(n.Name))
	}
	return names, map[string]bool{Admin: true, SuperAdmin: true}
}

// ensureKubeconfigs writes each kubeconfig. They are derived files: written
// when missing or when their content (server, certificate) changed.
func (cl *Cluster) ensureKubeconfigs(c plan.Cluster, opts Options, rep *Report) error {
	names, admin := kubeconfigNames(c)
	for _, name := range names {
		server := opts.ComponentServer
		if admin[name] {
			server = opts.AdminServer
		}
		if server == "" {
			return fmt.Errorf("kubeconfig %s: no API server URL (the cluster has no control plane and Options.ComponentServer is empty)", name)
		}
		data, err := cl.KubeconfigFor(name, server)
		if err != nil {
			return err
		}
		path := KubeconfigPath(cl.Dir, name)
		old, err := readOptional(path)
		if err != nil {
			return err
		}
		switch {
		case old == nil:
			rep.add(name+".kubeconfig", Created, "")
		case !bytes.Equal(old, data):
			rep.add(name+".kubeconfig", Updated, "server or credentials changed")
		}
		if !bytes.Equal(old, data) {
			if err := writeFile(path, data, keyMode); err != nil {
				return err
			}
		} else if changed, err := ensureMode(path, keyMode); err != nil {
			return err
		} else if changed {
			rep.add(name+".kubeconfig", Chmod, path)
		}
		cl.kcNames = append(cl.kcNames, name)
		cl.kubeconfigs[name] = data
	}
	return nil
}

// ContextName is the cluster and context name in the cluster's admin
// kubeconfig; other identities get <ContextName>-<name> contexts so that
// merged kubeconfigs do not clash.
func ContextName(lab, cluster string) string { return "kubelab-" + lab + "-" + cluster }

// Kubeconfig returns the kubeconfig Ensure wrote for name (Admin,
// SuperAdmin, ControllerManager, Scheduler, KubeProxy, KubeletClient(node)).
func (cl *Cluster) Kubeconfig(name string) ([]byte, error) {
	data, ok := cl.kubeconfigs[name]
	if !ok {
		return nil, fmt.Errorf("cluster %s has no kubeconfig %q", cl.Name, name)
	}
	return data, nil
}

// KubeconfigNames lists the kubeconfigs Ensure wrote, in a fixed order.
func (cl *Cluster) KubeconfigNames() []string { return append([]string(nil), cl.kcNames...) }

// KubeconfigFor builds a kubeconfig for credential name against server,
// e.g. https://127.0.0.1:6443 for components on a control plane. It embeds
// the Kubernetes CA, the certificate and the key.
func (cl *Cluster) KubeconfigFor(name, server string) ([]byte, error) {
	cr, ok := cl.creds[name]
	if !ok || cr.spec.CA != KubernetesCA {
		return nil, fmt.Errorf("cluster %s has no Kubernetes client credential %q", cl.Name, name)
	}
	trust, err := cl.CACert(KubernetesCA)
	if err != nil {
		return nil, err
	}
	base := ContextName(cl.Lab, cl.Name)
	context := base
	if name != Admin {
		context = base + "-" + name
	}
	user := base + "-" + name
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[base] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: trust}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cr.certPEM, ClientKeyData: cr.keyPEM}
	cfg.Contexts[context] = &clientcmdapi.Context{Cluster: base, AuthInfo: user}
	cfg.CurrentContext = context
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", name, err)
	}
	return data, nil
}
