package nodeconfig

import (
	"fmt"
	"strings"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
)

// Leader election tuned for emulation: the defaults (15 s lease, 10 s
// renew deadline) make controllers lose leadership on a stalled vCPU.
const (
	leaseDuration = "60s"
	renewDeadline = "40s"
	retryPeriod   = "5s"
)

func serviceCIDRs(c plan.Cluster) string {
	s := c.ServiceCIDR.String()
	if c.ServiceCIDR6.IsValid() {
		s += "," + c.ServiceCIDR6.String()
	}
	return s
}

func podCIDRs(c plan.Cluster) string {
	s := c.PodCIDR.String()
	if c.PodCIDR6.IsValid() {
		s += "," + c.PodCIDR6.String()
	}
	return s
}

// ServiceAccountIssuer is the issuer the API server puts into tokens.
func ServiceAccountIssuer(c plan.Cluster) string {
	return "https://kubernetes.default.svc." + c.ClusterDomain
}

func (b *builder) controlPlane() error {
	n, c := b.in.Node, b.in.Cluster
	etcdURLs := etcdClientURLs(c)
	if len(etcdURLs) == 0 {
		return fmt.Errorf("cluster %s has no etcd member; give at least one node the etcd role", c.Name)
	}
	for _, name := range []string{pki.APIServer, pki.APIServerKubeletClient, pki.FrontProxyClient, pki.EtcdAPIServerClient} {
		if err := b.cert(name); err != nil {
			return err
		}
	}
	// The controller manager signs with the Kubernetes CA's current pair;
	// ca.crt is what is trusted, which during a CA rotation holds both
	// generations and so cannot be the signing certificate.
	signerCrt, signerKey, err := b.in.Creds.PEM(pki.KubernetesCA)
	if err != nil {
		return fmt.Errorf("the Kubernetes CA's signing pair: %w", err)
	}
	if err := b.addFile(File{Path: SignerCertPath, Mode: 0o644, Contents: signerCrt}); err != nil {
		return err
	}
	if err := b.addFile(File{Path: SignerKeyPath, Mode: 0o600, Contents: signerKey, Secret: true}); err != nil {
		return err
	}
	for _, name := range []string{pki.KubernetesCA, pki.FrontProxyCA, pki.EtcdCA} {
		if err := b.caCert(name); err != nil {
			return err
		}
	}
	saPub, saKey, err := b.in.Creds.PEM(pki.ServiceAccount)
	if err != nil {
		return fmt.Errorf("service-account key pair: %w", err)
	}
	if err := b.addFile(File{Path: saPubPath, Mode: 0o644, Contents: saPub}); err != nil {
		return err
	}
	if err := b.addFile(File{Path: saKeyPath, Mode: 0o600, Contents: saKey, Secret: true}); err != nil {
		return err
	}
	enc := b.in.Creds.EncryptionConfig()
	if len(enc) == 0 {
		return fmt.Errorf("no encryption configuration for the API server")
	}
	enc = append([]byte(b.header("#", "From the cluster's PKI (kubelab certs rotate-encryption-key replaces it).")), enc...)
	if err := b.addFile(File{Path: EncryptionConfigPath, Mode: 0o600, Contents: enc, Secret: true}); err != nil {
		return err
	}
	if err := b.localKubeconfig(pki.ControllerManager, "controller-manager"); err != nil {
		return err
	}
	if err := b.localKubeconfig(pki.Scheduler, "scheduler"); err != nil {
		return err
	}

	advertise := n.Address.String()
	apiFlags := []string{
		"--advertise-address=" + advertise,
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--allow-privileged=true",
		"--anonymous-auth=false",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--client-ca-file=" + certPath(pki.KubernetesCA),
		"--tls-cert-file=" + certPath(pki.APIServer),
		"--tls-private-key-file=" + keyPath(pki.APIServer),
		"--etcd-servers=" + strings.Join(etcdURLs, ","),
		"--etcd-cafile=" + certPath(pki.EtcdCA),
		"--etcd-certfile=" + certPath(pki.EtcdAPIServerClient),
		"--etcd-keyfile=" + keyPath(pki.EtcdAPIServerClient),
		"--kubelet-client-certificate=" + certPath(pki.APIServerKubeletClient),
		"--kubelet-client-key=" + keyPath(pki.APIServerKubeletClient),
		"--kubelet-certificate-authority=" + certPath(pki.KubernetesCA),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=" + ServiceAccountIssuer(c),
		"--service-account-key-file=" + saPubPath,
		"--service-account-signing-key-file=" + saKeyPath,
		"--service-cluster-ip-range=" + serviceCIDRs(c),
		fmt.Sprintf("--service-node-port-range=%d-%d", c.NodePortFrom, c.NodePortTo),
		"--proxy-client-cert-file=" + certPath(pki.FrontProxyClient),
		"--proxy-client-key-file=" + keyPath(pki.FrontProxyClient),
		// Only the front-proxy client certificate is signed by this CA, so
		// no --requestheader-allowed-names restriction is needed.
		"--requestheader-client-ca-file=" + certPath(pki.FrontProxyCA),
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--enable-aggregator-routing=true",
		// Secrets are encrypted in etcd with the cluster's key.
		"--encryption-provider-config=" + EncryptionConfigPath,
	}
	cmKubeconfig := kubeconfigPath("controller-manager")
	awaitPeer, err := b.awaitAPIEndpoint(cmKubeconfig)
	if err != nil {
		return err
	}
	b.unit("kube-apiserver.service", fmt.Sprintf(`[Unit]
Description=Kubernetes API server of cluster %s
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/
After=network-online.target etcd.service
Wants=network-online.target

[Service]
%s%s
Restart=always
RestartSec=5
LimitNOFILE=65536
# Its graceful stop waits up to 60 s for open watches to end, which they
# never do; the state is in etcd, so a lab's restart does not wait that out.
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
`, c.Name, awaitPeer, execStart(bin("kube-apiserver"), apiFlags)))

	cmFlags := append(localComponentFlags(cmKubeconfig),
		"--cluster-name="+c.Name,
		"--client-ca-file="+certPath(pki.KubernetesCA),
		"--requestheader-client-ca-file="+certPath(pki.FrontProxyCA),
		"--cluster-signing-cert-file="+SignerCertPath,
		"--cluster-signing-key-file="+SignerKeyPath,
		"--root-ca-file="+certPath(pki.KubernetesCA),
		"--service-account-private-key-file="+saKeyPath,
		"--use-service-account-credentials=true",
		// kubelab assigns every node its pod CIDR itself (the plan).
		"--allocate-node-cidrs=false",
		"--service-cluster-ip-range="+serviceCIDRs(c),
	)
	cmFlags = append(cmFlags, leaderElectionFlags()...)
	b.unit("kube-controller-manager.service", fmt.Sprintf(`[Unit]
Description=Kubernetes controller manager of cluster %s
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/
After=network-online.target kube-apiserver.service
Wants=network-online.target

[Service]
# The controller manager gives the API server 10 s to become healthy and
# exits otherwise; under emulation the API server's post-start hooks take
# minutes, and the restarted controller manager then waits out its dead
# predecessor's leader lease (measured: about 100 s lost). So it starts once
# /healthz answers to its own identity (images without kubectl skip the wait).
# kubectl costs about a second of CPU per run under emulation, taken from
# the starting API server: it runs once port 6443 accepts connections (a
# bash TCP connect, a tenth of that), then every 10 s.
ExecStartPre=/bin/sh -c '[ -x %s ] || exit 0; until bash -c "</dev/tcp/127.0.0.1/%d" 2>/dev/null; do sleep 2; done; until %s --kubeconfig=%s get --raw=/healthz >/dev/null 2>&1; do sleep 10; done'
TimeoutStartSec=infinity
%s
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, c.Name, bin("kubectl"), APIServerPort, bin("kubectl"), cmKubeconfig, execStart(bin("kube-controller-manager"), cmFlags)))

	schedKubeconfig := kubeconfigPath("scheduler")
	schedFlags := append(localComponentFlags(schedKubeconfig), leaderElectionFlags()...)
	b.unit("kube-scheduler.service", fmt.Sprintf(`[Unit]
Description=Kubernetes scheduler of cluster %s
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/
After=network-online.target kube-apiserver.service
Wants=network-online.target

[Service]
%s
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, c.Name, execStart(bin("kube-scheduler"), schedFlags)))
	b.enable("kube-apiserver.service", "kube-controller-manager.service", "kube-scheduler.service")
	return nil
}

// localComponentFlags are the controller-manager's and scheduler's shared
// identity flags: one kubeconfig for API access, authentication and
// authorization, and a health endpoint on loopback only.
func localComponentFlags(kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
	}
}

// leaderElectionFlags use timings that survive software emulation.
func leaderElectionFlags() []string {
	return []string{
		"--leader-elect=true",
		"--leader-elect-lease-duration=" + leaseDuration,
		"--leader-elect-renew-deadline=" + renewDeadline,
		"--leader-elect-retry-period=" + retryPeriod,
	}
}
