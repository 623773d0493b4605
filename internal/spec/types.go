// Package spec defines lab.yaml: its types, strict parsing with field paths,
// defaults and validation. Nothing here touches the host beyond reading the
// files the spec names (ssh public keys, Butane snippets).
package spec

// APIVersion is the only lab.yaml version this kubelab reads.
const APIVersion = "kubelab.dev/v1alpha1"

// Kind is the only kind of document lab.yaml holds.
const Kind = "Lab"

// Lab is the whole lab.yaml document.
type Lab struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Name       string `yaml:"name"`
	Hypervisor string `yaml:"hypervisor"` // qemu (default) | libvirt | xen
	// Libvirt is the connection of hypervisor: libvirt.
	Libvirt Libvirt `yaml:"libvirt"`
	// Xen sets how hypervisor: xen runs the nodes.
	Xen      Xen          `yaml:"xen"`
	Network  Network      `yaml:"network"`
	Defaults NodeDefaults `yaml:"defaults"`
	SSHKeys  []string     `yaml:"sshKeys"`
	// Certificates sets the lifetimes of what kubelab's PKI issues.
	Certificates Certificates `yaml:"certificates"`
	Clusters     []Cluster    `yaml:"clusters"`
}

// Libvirt says which libvirt daemon runs the lab's machines.
type Libvirt struct {
	// URI is a libvirt connection URI of a daemon on this host:
	// qemu:///system (default), qemu:///session, a socket= query for
	// another socket, or a network transport (qemu+tcp|tls|ssh://HOST/system).
	URI string `yaml:"uri"`
}

// Xen is how the Xen driver gives nodes their disks.
type Xen struct {
	// Disk is the node disk's format: qcow2 (default; an overlay on the
	// image served by xl's qdisk backend, QEMU in dom0) or raw (a full copy
	// of the image served by blkback, as the Xen guide does).
	Disk string `yaml:"disk"`
}

// Node disk formats of hypervisor: xen.
const (
	XenDiskQCOW2 = "qcow2"
	XenDiskRaw   = "raw"
)

// Certificates are the lifetimes of new certificates, as durations with a
// day unit allowed ("365d", "8760h"). They apply when a certificate is
// issued or renewed; existing certificates keep their dates.
type Certificates struct {
	CAValidity   string `yaml:"caValidity"`   // default 3650d
	LeafValidity string `yaml:"leafValidity"` // default 365d
}

// Network is the lab network all clusters share.
type Network struct {
	CIDR      string `yaml:"cidr"`      // IPv4 lab network, default 192.168.100.0/24
	Gateway   string `yaml:"gateway"`   // host address on the bridge, default first host
	Bridge    string `yaml:"bridge"`    // Linux bridge name, default kl-<lab>
	Namespace string `yaml:"namespace"` // optional network namespace holding the whole lab network
	Failsafe  string `yaml:"failsafe"`  // failsafe/debug VM address, default last host (.254)
	CIDR6     string `yaml:"cidr6"`     // IPv6 lab network for dual-stack clusters
	// DHCP runs dnsmasq on the bridge, handing each node (and the failsafe
	// VM) its planned address by MAC, as the "Kubernetes and Xen" guide does.
	DHCP bool `yaml:"dhcp"`
	// ConfigServer makes up run the lab's config server (the guide's
	// nginx) on the gateway, port 80, and boots the nodes provisioned by
	// Ignition with its URL (ignition.config.url) instead of handing the
	// config to the hypervisor.
	ConfigServer bool `yaml:"configServer"`
}

// NodeDefaults apply to every node that does not say otherwise.
type NodeDefaults struct {
	Image        string `yaml:"image"`
	CPUs         int    `yaml:"cpus"`
	Memory       string `yaml:"memory"`
	Disk         string `yaml:"disk"`
	Provisioning string `yaml:"provisioning"`
}

// Cluster is one Kubernetes cluster in its own address block.
type Cluster struct {
	Name              string   `yaml:"name"`
	Index             int      `yaml:"index"` // block index 1..9
	KubernetesVersion string   `yaml:"kubernetesVersion"`
	PodCIDR           string   `yaml:"podCIDR"`
	ServiceCIDR       string   `yaml:"serviceCIDR"`
	PodNetwork        string   `yaml:"podNetwork"` // routes | flannel
	IPFamily          string   `yaml:"ipFamily"`   // ipv4 | dual
	PodCIDR6          string   `yaml:"podCIDR6"`
	ServiceCIDR6      string   `yaml:"serviceCIDR6"`
	Provisioning      string   `yaml:"provisioning"`
	Butane            []string `yaml:"butane"`
	APIPort           int      `yaml:"apiPort"`       // host port forwarded to the API server
	NodePortRange     string   `yaml:"nodePortRange"` // e.g. 31000-31999
	Nodes             []Node   `yaml:"nodes"`
}

// Node is one VM.
type Node struct {
	Name         string   `yaml:"name"`
	Roles        []string `yaml:"roles"`
	Address      string   `yaml:"address"`
	MAC          string   `yaml:"mac"`
	Image        string   `yaml:"image"`
	CPUs         int      `yaml:"cpus"`
	Memory       string   `yaml:"memory"`
	Disk         string   `yaml:"disk"`
	Provisioning string   `yaml:"provisioning"`
}

// Roles a node can hold, in any combination.
const (
	RoleEtcd         = "etcd"
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Pod network modes.
const (
	PodNetworkRoutes  = "routes"
	PodNetworkFlannel = "flannel"
)

// Hypervisors a lab can run on.
const (
	HypervisorQEMU    = "qemu"
	HypervisorLibvirt = "libvirt"
	HypervisorXen     = "xen"
)

// Provisioning formats.
const (
	ProvisionOverlay   = "overlay"
	ProvisionCloudInit = "cloud-init"
	ProvisionIgnition  = "ignition"
)

// IP families.
const (
	IPv4      = "ipv4"
	DualStack = "dual"
)

// HasRole reports whether the node holds role.
func (n Node) HasRole(role string) bool {
	for _, r := range n.Roles {
		if r == role {
			return true
		}
	}
	return false
}
