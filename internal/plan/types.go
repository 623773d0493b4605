// Package plan turns a validated spec into the lab's address plan: every
// node's address, MAC, pod CIDR and ssh forward, every cluster's service
// addresses and host port forwards. It is a pure function of the spec: the
// same spec gives a byte-identical plan.
package plan

import "net/netip"

// Plan is everything about the lab that can be computed before a VM exists.
type Plan struct {
	Lab      string    `json:"lab"`
	Network  Network   `json:"network"`
	Clusters []Cluster `json:"clusters"`
	Forwards []Forward `json:"forwards"`
}

// Network is the lab network on the host side.
type Network struct {
	CIDR            netip.Prefix `json:"cidr"`
	Gateway         netip.Addr   `json:"gateway"`
	Bridge          string       `json:"bridge"`
	Namespace       string       `json:"namespace,omitempty"`
	Failsafe        netip.Addr   `json:"failsafe"`
	FailsafeMAC     string       `json:"failsafeMAC"`
	FailsafeSSHPort int          `json:"failsafeSSHPort"`
	CIDR6           netip.Prefix `json:"cidr6,omitzero"`
	Gateway6        netip.Addr   `json:"gateway6,omitzero"`
	// DHCP: dnsmasq on the bridge hands out the planned addresses by MAC.
	DHCP bool `json:"dhcp,omitempty"`
	// ConfigServer: up serves the nodes' configs over HTTP on the gateway
	// at ConfigServerPort.
	ConfigServer     bool `json:"configServer,omitempty"`
	ConfigServerPort int  `json:"configServerPort,omitempty"`
}

// Cluster is one cluster's block, networks and endpoints.
type Cluster struct {
	Name              string        `json:"name"`
	Index             int           `json:"index"`
	KubernetesVersion string        `json:"kubernetesVersion"`
	Block             [2]netip.Addr `json:"block"` // first and last address the cluster owns
	PodCIDR           netip.Prefix  `json:"podCIDR"`
	ServiceCIDR       netip.Prefix  `json:"serviceCIDR"`
	APIServiceIP      netip.Addr    `json:"apiServiceIP"` // first service address: the kubernetes service
	DNSServiceIP      netip.Addr    `json:"dnsServiceIP"` // .10 of the service network
	PodCIDR6          netip.Prefix  `json:"podCIDR6,omitzero"`
	ServiceCIDR6      netip.Prefix  `json:"serviceCIDR6,omitzero"`
	PodNetwork        string        `json:"podNetwork"`
	IPFamily          string        `json:"ipFamily"`
	ClusterDomain     string        `json:"clusterDomain"`
	// APIServer is the API endpoint inside the lab: the only control plane's
	// address, or APIVIP when there are two or more.
	APIServer netip.AddrPort `json:"apiServer"`
	// APIVIP is the virtual address keepalived keeps on one live control
	// plane; set when the cluster has two or more.
	APIVIP       netip.Addr `json:"apiVIP,omitzero"`
	APIHostPort  int        `json:"apiHostPort"`  // host port forwarded to it
	NodePortFrom int        `json:"nodePortFrom"` // also the API server's --service-node-port-range
	NodePortTo   int        `json:"nodePortTo"`
	Provisioning string     `json:"provisioning"`
	Butane       []string   `json:"butane,omitempty"` // absolute paths of Butane snippets
	Nodes        []Node     `json:"nodes"`
}

// Node is one VM of a cluster.
type Node struct {
	Name         string       `json:"name"`
	Cluster      string       `json:"cluster"`
	Roles        []string     `json:"roles"`
	Address      netip.Addr   `json:"address"`
	MAC          string       `json:"mac"`
	PodCIDR      netip.Prefix `json:"podCIDR,omitzero"` // only nodes that run pods (workers)
	Address6     netip.Addr   `json:"address6,omitzero"`
	PodCIDR6     netip.Prefix `json:"podCIDR6,omitzero"`
	SSHHostPort  int          `json:"sshHostPort"`
	CPUs         int          `json:"cpus"`
	MemoryMiB    uint64       `json:"memoryMiB"`
	DiskGiB      uint64       `json:"diskGiB"`
	Image        string       `json:"image"`
	Provisioning string       `json:"provisioning"`
}

// Forward is one host port (or range) forwarded into the lab network.
type Forward struct {
	Purpose    string     `json:"purpose"` // ssh, api, nodeports
	Cluster    string     `json:"cluster,omitempty"`
	Node       string     `json:"node,omitempty"`
	HostFrom   int        `json:"hostFrom"`
	HostTo     int        `json:"hostTo"`
	Target     netip.Addr `json:"target"`
	TargetFrom int        `json:"targetFrom"`
	TargetTo   int        `json:"targetTo"`
}

// HasRole reports whether the node holds role.
func (n Node) HasRole(role string) bool {
	for _, r := range n.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// NodesWithRole lists the cluster's nodes holding role, in spec order.
func (c Cluster) NodesWithRole(role string) []Node {
	var out []Node
	for _, n := range c.Nodes {
		if n.HasRole(role) {
			out = append(out, n)
		}
	}
	return out
}

// Node finds a node by name anywhere in the lab.
func (p *Plan) Node(name string) (Cluster, Node, bool) {
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			if n.Name == name {
				return c, n, true
			}
		}
	}
	return Cluster{}, Node{}, false
}

// Cluster finds a cluster by name.
func (p *Plan) Cluster(name string) (Cluster, bool) {
	for _, c := range p.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}
