package spec

import (
	"fmt"

	"github.com/kubelab/kubelab/internal/versions"
)

// Defaults of the Xen guide's address plan and of node resources.
const (
	DefaultLabName      = "lab"
	DefaultLabCIDR      = "192.168.100.0/24"
	DefaultLabCIDR6     = "fd6b:6c61:6200::/64"
	DefaultPodCIDR      = "172.16.0.0/16"
	DefaultServiceCIDR  = "10.199.0.0/16"
	DefaultPodCIDR6     = "fd6b:6c61:6201::/56"
	DefaultServiceCIDR6 = "fd6b:6c61:6202::/112"
	DefaultImage        = "kubelab"
	DefaultHypervisor   = HypervisorQEMU
	DefaultLibvirtURI   = "qemu:///system"
	DefaultCPUs         = 1
	DefaultMemory       = "2GiB"
	DefaultDisk         = "20GiB"
	DefaultProvisioning = ProvisionOverlay
	DefaultCAValidity   = "3650d"
	DefaultLeafValidity = "365d"
	APIPortBase         = 8100  // cluster k's API server is forwarded from 8100+k
	NodePortBase        = 30000 // cluster k's NodePorts are 30000+1000k .. +999
	MaxClusters         = 9
	bridgeNameMaxLen    = 15 // IFNAMSIZ-1
)

// ApplyDefaults fills every field the user left empty. It is applied after
// Parse and before Validate, so validation sees the values that will be used.
func ApplyDefaults(lab *Lab) {
	setDefault(&lab.APIVersion, APIVersion)
	setDefault(&lab.Kind, Kind)
	setDefault(&lab.Name, DefaultLabName)
	setDefault(&lab.Hypervisor, DefaultHypervisor)
	if lab.Hypervisor == HypervisorXen {
		setDefault(&lab.Xen.Disk, XenDiskQCOW2)
	}
	if lab.Hypervisor == HypervisorLibvirt {
		setDefault(&lab.Libvirt.URI, DefaultLibvirtURI)
	}
	setDefault(&lab.Certificates.CAValidity, DefaultCAValidity)
	setDefault(&lab.Certificates.LeafValidity, DefaultLeafValidity)
	n := &lab.Network
	setDefault(&n.CIDR, DefaultLabCIDR)
	if n.Bridge == "" {
		b := "kl-" + lab.Name
		if len(b) > bridgeNameMaxLen {
			b = b[:bridgeNameMaxLen]
		}
		n.Bridge = b
	}
	d := &lab.Defaults
	setDefault(&d.Image, DefaultImage)
	if d.CPUs == 0 {
		d.CPUs = DefaultCPUs
	}
	setDefault(&d.Memory, DefaultMemory)
	setDefault(&d.Disk, DefaultDisk)
	setDefault(&d.Provisioning, DefaultProvisioning)

	used := map[int]bool{}
	for _, c := range lab.Clusters {
		used[c.Index] = true
	}
	next := 1
	for i := range lab.Clusters {
		c := &lab.Clusters[i]
		if c.Index == 0 {
			for used[next] {
				next++
			}
			c.Index = next
			used[next] = true
		}
		setDefault(&c.KubernetesVersion, defaultKubernetesVersion())
		setDefault(&c.PodCIDR, DefaultPodCIDR)
		setDefault(&c.ServiceCIDR, DefaultServiceCIDR)
		setDefault(&c.PodNetwork, PodNetworkRoutes)
		setDefault(&c.IPFamily, IPv4)
		if c.IPFamily == DualStack {
			setDefault(&c.PodCIDR6, DefaultPodCIDR6)
			setDefault(&c.ServiceCIDR6, DefaultServiceCIDR6)
			setDefault(&n.CIDR6, DefaultLabCIDR6)
		}
		setDefault(&c.Provisioning, d.Provisioning)
		if c.APIPort == 0 {
			c.APIPort = APIPortBase + c.Index
		}
		if c.NodePortRange == "" {
			from := NodePortBase + 1000*c.Index
			c.NodePortRange = fmt.Sprintf("%d-%d", from, from+999)
		}
		for j := range c.Nodes {
			nd := &c.Nodes[j]
			setDefault(&nd.Image, d.Image)
			if nd.CPUs == 0 {
				nd.CPUs = d.CPUs
			}
			setDefault(&nd.Memory, d.Memory)
			setDefault(&nd.Disk, d.Disk)
			setDefault(&nd.Provisioning, c.Provisioning)
		}
	}
}

func setDefault(field *string, value string) {
	if *field == "" {
		*field = value
	}
}

func defaultKubernetesVersion() string { return versions.Default().Kubernetes }
