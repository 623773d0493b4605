package pki

import (
	"crypto/x509"
	"net/netip"
	"slices"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

var (
	serverAuth      = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	clientAuth      = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	serverAndClient = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.MustParseAddr("::1")
)

// requiredCerts lists every certificate the cluster needs, CAs first, in a
// fixed order: the plan alone decides names, subjects and SANs.
func requiredCerts(lab string, c plan.Cluster, n plan.Network) []certSpec {
	org := []string{"kubelab " + lab + "/" + c.Name}
	specs := []certSpec{
		{Name: EtcdCA, CommonName: "etcd-ca", Organization: org},
		{Name: KubernetesCA, CommonName: "kubernetes-ca", Organization: org},
		{Name: FrontProxyCA, CommonName: "front-proxy-ca", Organization: org},
		{Name: AppsCA, CommonName: "apps-ca", Organization: org},
	}
	dual := c.ServiceCIDR6.IsValid()

	// etcd uses its serving certificate as a client too (gateway, health
	// checks) and peers authenticate each other both ways.
	for _, node := range c.NodesWithRole(spec.RoleEtcd) {
		ips := nodeIPs(node)
		serverIPs := append(slices.Clone(ips), loopback4)
		if dual {
			serverIPs = append(serverIPs, loopback6)
		}
		specs = append(specs,
			certSpec{Name: EtcdServer(node.Name), CA: EtcdCA, CommonName: node.Name,
				DNSNames: []string{node.Name, "localhost"}, IPs: serverIPs, Usages: serverAndClient},
			certSpec{Name: EtcdPeer(node.Name), CA: EtcdCA, CommonName: node.Name,
				DNSNames: []string{node.Name}, IPs: ips, Usages: serverAndClient},
		)
	}
	specs = append(specs,
		certSpec{Name: EtcdAPIServerClient, CA: EtcdCA, CommonName: "kube-apiserver-etcd-client", Usages: clientAuth},
		certSpec{Name: EtcdFlannelClient, CA: EtcdCA, CommonName: "flannel", Usages: clientAuth},
		apiServerSpec(c, n),
		certSpec{Name: APIServerKubeletClient, CA: KubernetesCA, CommonName: "kube-apiserver-kubelet-client", Usages: clientAuth},
		certSpec{Name: FrontProxyClient, CA: FrontProxyCA, CommonName: "front-proxy-client", Usages: clientAuth},
		certSpec{Name: ControllerManager, CA: KubernetesCA, CommonName: "system:kube-controller-manager", Usages: clientAuth},
		certSpec{Name: Scheduler, CA: KubernetesCA, CommonName: "system:kube-scheduler", Usages: clientAuth},
		certSpec{Name: KubeProxy, CA: KubernetesCA, CommonName: "system:kube-proxy", Usages: clientAuth},
		certSpec{Name: Admin, CA: KubernetesCA, CommonName: "kubelab-admin", Organization: []string{AdminGroup}, Usages: clientAuth},
		certSpec{Name: SuperAdmin, CA: KubernetesCA, CommonName: "kubelab-super-admin", Organization: []string{"system:masters"}, Usages: clientAuth},
	)
	for _, node := range c.NodesWithRole(spec.RoleWorker) {
		id := "system:node:" + node.Name
		specs = append(specs,
			certSpec{Name: KubeletClient(node.Name), CA: KubernetesCA, CommonName: id,
				Organization: []string{"system:nodes"}, Usages: clientAuth},
			certSpec{Name: KubeletServing(node.Name), CA: KubernetesCA, CommonName: id,
				Organization: []string{"system:nodes"}, DNSNames: []string{node.Name}, IPs: nodeIPs(node), Usages: serverAuth},
		)
	}
	return specs
}

// apiServerSpec names every way the API server is reached: by its service
// inside the cluster, by each control plane's name and address, on the node
// itself, by the control planes' shared virtual address, and through the
// host forward (loopback or the lab gateway).
func apiServerSpec(c plan.Cluster, n plan.Network) certSpec {
	domain := c.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + domain, "localhost"}
	var ips []netip.Addr
	ips = appendAddr(ips, c.APIServiceIP)
	if c.ServiceCIDR6.IsValid() {
		ips = appendAddr(ips, c.ServiceCIDR6.Masked().Addr().Next())
	}
	for _, node := range c.NodesWithRole(spec.RoleControlPlane) {
		dns = appendString(dns, node.Name)
		for _, a := range nodeIPs(node) {
			ips = appendAddr(ips, a)
		}
	}
	ips = appendAddr(ips, c.APIVIP)
	ips = appendAddr(ips, loopback4)
	if c.ServiceCIDR6.IsValid() {
		ips = appendAddr(ips, loopback6)
	}
	ips = appendAddr(ips, n.Gateway)
	if c.ServiceCIDR6.IsValid() {
		ips = appendAddr(ips, n.Gateway6)
	}
	return certSpec{Name: APIServer, CA: KubernetesCA, CommonName: "kube-apiserver", DNSNames: dns, IPs: ips, Usages: serverAuth}
}

func nodeIPs(n plan.Node) []netip.Addr {
	var ips []netip.Addr
	ips = appendAddr(ips, n.Address)
	ips = appendAddr(ips, n.Address6)
	return ips
}

// appendAddr adds a valid address once, keeping first-seen order.
func appendAddr(ips []netip.Addr, a netip.Addr) []netip.Addr {
	if !a.IsValid() {
		return ips
	}
	for _, x := range ips {
		if x == a {
			return ips
		}
	}
	return append(ips, a)
}

func appendString(ss []string, s string) []string {
	for _, x := range ss {
		if x == s {
			return ss
		}
	}
	return append(ss, s)
}

// CertNames lists the certificates cluster c needs, split into leaves and
// CAs, in requiredCerts order; nothing on disk is read.
func CertNames(c plan.Cluster, n plan.Network) (leaves, cas []string) {
	for _, s := range requiredCerts("", c, n) {
		if s.isCA() {
			cas = append(cas, s.Name)
		} else {
			leaves = append(leaves, s.Name)
		}
	}
	return leaves, cas
}
