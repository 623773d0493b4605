package lab

import (
	"path/filepath"

	"github.com/kubelab/kubelab/internal/image"
)

// Layout names every path in a lab directory (see DESIGN.md).
type Layout struct{ Dir string }

func (l Layout) Spec() string            { return filepath.Join(l.Dir, "lab.yaml") }
func (l Layout) SSHKey() string          { return filepath.Join(l.Dir, "ssh", "id_ed25519") }
func (l Layout) KnownHosts() string      { return filepath.Join(l.Dir, "ssh", "known_hosts") }
func (l Layout) Cluster(c string) string { return filepath.Join(l.Dir, "clusters", c) }
func (l Layout) Addons(c string) string  { return filepath.Join(l.Cluster(c), "addons") }
func (l Layout) Node(c, n string) string { return filepath.Join(l.Cluster(c), "nodes", n) }
func (l Layout) HostKey(c, n string) string {
	return filepath.Join(l.Node(c, n), "ssh_host_ed25519_key")
}
func (l Layout) Images() string { return filepath.Join(l.Dir, "images") }

// ImageKernel is the kernel of the named image in the lab (direct boot).
func (l Layout) ImageKernel(name string) string {
	return filepath.Join(l.Images(), name, image.KernelFile)
}

func (l Layout) Timings(cmd string) string  { return filepath.Join(l.Dir, "timings-"+cmd+".json") }
func (l Layout) HostNet() string            { return filepath.Join(l.Dir, "hostnet") }
func (l Layout) Kubeconfig(c string) string { return filepath.Join(l.Cluster(c), "kubeconfig") }

// CloudInitDir is the directory of a node's NoCloud files in its node directory.
const CloudInitDir = "cloud-init"

// Snapshots is the directory of a cluster's snapshots; Snapshot one of them.
func (l Layout) Snapshots(c string) string { return filepath.Join(l.Cluster(c), "snapshots") }
func (l Layout) Snapshot(c, name string) string {
	return filepath.Join(l.Snapshots(c), name)
}
