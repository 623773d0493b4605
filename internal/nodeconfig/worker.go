package nodeconfig

import (
	"fmt"
	"strings"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

func (b *builder) worker() error {
	if err := b.containerd(); err != nil {
		return err
	}
	if err := b.kubelet(); err != nil {
		return err
	}
	if err := b.kubeProxy(); err != nil {
		return err
	}
	b.enable("containerd.service", "kubelet.service", "kube-proxy.service")
	return nil
}

// ContainerdConfig is containerd 2.x's configuration (version 3) for
// Kubernetes: runc with the systemd cgroup driver, the pre-loaded pause
// image pinned so it is never garbage-collected or pulled, and the CNI
// plugins where the node image installs them.
func ContainerdConfig(v versions.Set) string {
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = %q

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q

  [plugins.'io.containerd.cri.v1.runtime']
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          SystemdCgroup = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q
`, ContainerdSock, v.PauseImage(), bin("runc"), versions.NodeCNIBinDir, CNIConfDir)
}

func (b *builder) containerd() error {
	if err := b.text(ContainerdConf, 0o644, "containerd configuration for Kubernetes (CRI).", ContainerdConfig(b.in.Versions)); err != nil {
		return err
	}
	if err := b.text("/etc/crictl.yaml", 0o644, "crictl talks to containerd.",
		fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n", ContainerdSock, ContainerdSock)); err != nil {
		return err
	}
	b.unit("containerd.service", fmt.Sprintf(`[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=%s --config %s
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`, bin("containerd"), ContainerdConf))
	return nil
}

// KubeletConfiguration is the kubelet's configuration file for node. podCIDR
// is set only when kubelab assigns the node's pod CIDR (routes mode).
func (b *builder) kubeletConfiguration() string {
	n, c := b.in.Node, b.in.Cluster
	var sb strings.Builder
	fmt.Fprintf(&sb, `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
# No unauthenticated read-only API (10255).
readOnlyPort: 0
cgroupDriver: systemd
containerRuntimeEndpoint: unix://%s
clusterDomain: %s
clusterDNS:
  - %s
tlsCertFile: %s
tlsPrivateKeyFile: %s
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: %s
failSwapOn: false
# Under emulation the runtime answers slowly; the 2m default is tight
# when many pods start at once.
runtimeRequestTimeout: 10m0s
`, certPath(pki.KubernetesCA), ContainerdSock, c.ClusterDomain, c.DNSServiceIP,
		certPath(pki.KubeletServing(n.Name)), keyPath(pki.KubeletServing(n.Name)), KubeletResolvConf)
	if c.PodNetwork == spec.PodNetworkRoutes && n.PodCIDR.IsValid() {
		p := n.PodCIDR.String()
		if n.PodCIDR6.IsValid() {
			p += "," + n.PodCIDR6.String()
		}
		fmt.Fprintf(&sb, "podCIDR: %s\n", p)
	}
	return sb.String()
}

func nodeIPs(b *builder) string {
	s := b.in.Node.Address.String()
	if b.in.Node.Address6.IsValid() {
		s += "," + b.in.Node.Address6.String()
	}
	return s
}

func (b *builder) kubelet() error {
	n := b.in.Node
	if err := b.caCert(pki.KubernetesCA); err != nil {
		return err
	}
	if err := b.cert(pki.KubeletServing(n.Name)); err != nil {
		return err
	}
	if err := b.kubeconfig(pki.KubeletClient(n.Name), "kubelet"); err != nil {
		return err
	}
	// Pods with dnsPolicy Default (CoreDNS itself) get this file as their
	// resolv.conf. The node's own /etc/resolv.conf may be empty or point
	// at a local stub resolver that a pod cannot reach.
	var resolv strings.Builder
	for _, d := range b.node.Network.DNS {
		fmt.Fprintf(&resolv, "nameserver %s\n", d)
	}
	if err := b.text(KubeletResolvConf, 0o644, "Upstream DNS for pods with dnsPolicy Default (CoreDNS forwards to it).", resolv.String()); err != nil {
		return err
	}
	if err := b.text(KubeletConfig, 0o644, "Kubelet configuration of node "+n.Name+".", b.kubeletConfiguration()); err != nil {
		return err
	}
	flags := []string{
		"--config=" + KubeletConfig,
		"--kubeconfig=" + kubeconfigPath("kubelet"),
		"--node-ip=" + nodeIPs(b),
		"--hostname-override=" + n.Name,
	}
	b.unit("kubelet.service", fmt.Sprintf(`[Unit]
Description=Kubernetes kubelet on node %s
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
After=containerd.service kubelab-images.service network-online.target
Wants=containerd.service network-online.target

[Service]
%s
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, n.Name, execStart(bin("kubelet"), flags)))
	return nil
}

// kubeProxyConfiguration is kube-proxy's configuration file.
func (b *builder) kubeProxyConfiguration() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
`, kubeconfigPath("kube-proxy"), podCIDRs(b.in.Cluster), b.in.Node.Name)
}

func (b *builder) kubeProxy() error {
	if err := b.kubeconfig(pki.KubeProxy, "kube-proxy"); err != nil {
		return err
	}
	if err := b.text(KubeProxyConf, 0o644, "kube-proxy configuration.", b.kubeProxyConfiguration()); err != nil {
		return err
	}
	b.unit("kube-proxy.service", fmt.Sprintf(`[Unit]
Description=Kubernetes kube-proxy on node %s
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/
After=network-online.target
Wants=network-online.target

[Service]
%s
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, b.in.Node.Name, execStart(bin("kube-proxy"), []string{"--config=" + KubeProxyConf})))
	return nil
}
