// Package versions pins the upstream versions kubelab builds and the names
// under which node images carry them. Both the component builder and the
// node configuration read these, so the image names a kubelet is told to use
// are exactly the ones written into the node image.
package versions

// Set is one consistent set of component versions.
type Set struct {
	Kubernetes string // e.g. v1.37.2
	Etcd       string
	CNIPlugins string
	CoreDNS    string
	Containerd string
	Runc       string
	Crictl     string
	Flannel    string
	Ignition   string // coreos/ignition, run from the node image's initramfs
	Pause      string // tag of the pause image Kubernetes expects
}

// Default is the set kubelab builds when the spec does not say otherwise.
func Default() Set {
	return Set{
		Kubernetes: "v1.37.2",
		Etcd:       "v3.6.16",
		CNIPlugins: "v1.9.1",
		CoreDNS:    "v1.14.6",
		Containerd: "v2.4.2",
		Runc:       "v1.5.2",
		Crictl:     "v1.36.0",
		Flannel:    "v0.28.10",
		Ignition:   "v2.24.0",
		Pause:      "3.10.2",
	}
}

// PauseImage is the sandbox image containerd and kubelet are configured with.
func (s Set) PauseImage() string { return "registry.k8s.io/pause:" + s.Pause }

// CoreDNSImage is the CoreDNS image the DNS add-on references.
func (s Set) CoreDNSImage() string { return "registry.k8s.io/coredns/coredns:" + s.CoreDNS }

// TestImage is the small busybox image used by smoke checks.
const TestImage = "kubelab.local/busybox:latest"

// Paths on a node where the node image installs components and where the
// node configuration expects them.
const (
	NodeBinDir      = "/usr/local/bin"            // kube-*, kubelet, kubectl, etcd, etcdctl, containerd*, runc, crictl, flanneld
	NodeCNIBinDir   = "/opt/cni/bin"              // CNI plugins
	NodeImagesDir   = "/var/lib/kubelab/images"   // image tarballs imported into containerd at boot
	NodeConfigDisk  = "kubelab-config"            // virtio serial of the overlay config disk
	ReadyMarker     = "KUBELAB-READY"             // printed on the serial console when a node finished booting
	TemplateMarker  = "KUBELAB-TEMPLATE"          // printed when a template boot waits for its configuration
	NodeOverlayMeta = "/etc/kubelab/overlay.json" // units to enable/mask, written by the overlay renderer
)
