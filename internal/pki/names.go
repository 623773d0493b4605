package pki

// Names of the credentials in a cluster's PKI. Each name N is stored as
// N.crt and N.key (or N.pub/N.key for the service-account pair) under
// clusters/<cluster>/pki/, and kubeconfigs as kubeconfigs/N.kubeconfig.
// The node configuration asks for credentials by these names.
const (
	EtcdCA       = "etcd/ca"
	KubernetesCA = "ca"
	FrontProxyCA = "front-proxy-ca"
	AppsCA       = "apps-ca" // for services exposed on NodePorts (the guide's third CA)

	EtcdAPIServerClient    = "etcd/apiserver-client"
	EtcdFlannelClient      = "etcd/flannel-client"
	APIServer              = "apiserver"
	APIServerKubeletClient = "apiserver-kubelet-client"
	FrontProxyClient       = "front-proxy-client"
	ControllerManager      = "controller-manager"
	Scheduler              = "scheduler"
	KubeProxy              = "kube-proxy"
	Admin                  = "admin"       // group kubelab:cluster-admins, bound to cluster-admin by an add-on
	SuperAdmin             = "super-admin" // system:masters; used only to create the admin binding, like kubeadm
	ServiceAccount         = "sa"          // sa.key / sa.pub
)

// EtcdServer is the serving certificate of etcd member node.
func EtcdServer(node string) string { return "etcd/server-" + node }

// EtcdPeer is the peer certificate of etcd member node.
func EtcdPeer(node string) string { return "etcd/peer-" + node }

// KubeletClient is node's client identity system:node:<node> in system:nodes.
func KubeletClient(node string) string { return "kubelet-" + node }

// KubeletServing is the serving certificate of node's kubelet.
func KubeletServing(node string) string { return "kubelet-serving-" + node }

// Group bound to cluster-admin for the admin identity.
const AdminGroup = "kubelab:cluster-admins"
