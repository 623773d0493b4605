package plan

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/kubelab/kubelab/internal/ipmath"
	"github.com/kubelab/kubelab/internal/spec"
)

// Address plan constants from the Xen guide.
const (
	blockSize     = 10   // cluster k owns offsets 10k .. 10k+9
	sshPortBase   = 8000 // ssh to the node at offset NN is forwarded from 80NN
	apiServerPort = 6443
	// configServerPort is the config server's port on the gateway (the
	// guide's nginx on 80).
	configServerPort = 80
	nodePodPrefix    = 24 // one /24 of the pod network per node
	nodePodPrefix6   = 64
	macPrefix        = "00:16:3e:4e:31"
	gatewayOffset    = 1
	clusterDomain    = "cluster.local"
	dnsServiceIndex  = 10
)

// New computes the plan of a defaulted, validated spec. baseDir resolves
// relative paths in the spec. Allocation problems (duplicate or misplaced
// addresses, full blocks, colliding forwards) come back as spec.Errors with
// field paths.
func New(lab *spec.Lab, baseDir string) (*Plan, error) {
	var errs spec.Errors
	labNet := netip.MustParsePrefix(lab.Network.CIDR)
	p := &Plan{Lab: lab.Name}
	p.Network = Network{
		CIDR:      labNet,
		Bridge:    lab.Network.Bridge,
		Namespace: lab.Network.Namespace,
		DHCP:      lab.Network.DHCP,
	}
	if lab.Network.ConfigServer {
		p.Network.ConfigServer, p.Network.ConfigServerPort = true, configServerPort
	}
	p.Network.Gateway = addrOr(lab.Network.Gateway, mustNth(labNet, gatewayOffset))
	p.Network.Failsafe = addrOr(lab.Network.Failsafe, lastHost(labNet))
	failsafeOffset := ipmath.Offset(labNet, p.Network.Failsafe)
	p.Network.FailsafeMAC = macFor(failsafeOffset)
	p.Network.FailsafeSSHPort = sshPortBase
	if lab.Network.CIDR6 != "" {
		p.Network.CIDR6 = netip.MustParsePrefix(lab.Network.CIDR6)
		p.Network.Gateway6 = mustNth(p.Network.CIDR6, gatewayOffset)
	}

	// Lab-wide uniqueness of addresses and MACs; the gateway and failsafe
	// addresses are taken before any node.
	addrOwner := map[netip.Addr]string{p.Network.Gateway: "network.gateway", p.Network.Failsafe: "network.failsafe"}
	macOwner := map[string]string{p.Network.FailsafeMAC: "network.failsafe (its MAC)"}
	ports := &portBook{}
	ports.claim("network.failsafe", sshPortBase, sshPortBase, &errs)

	for ci, sc := range lab.Clusters {
		cp := spec.Index("clusters", ci)
		c, ok := planCluster(sc, cp, p.Network, baseDir, addrOwner, macOwner, &errs)
		if !ok {
			continue
		}
		for _, n := range c.Nodes {
			p.Forwards = append(p.Forwards, Forward{Purpose: "ssh", Cluster: c.Name, Node: n.Name,
				HostFrom: n.SSHHostPort, HostTo: n.SSHHostPort, Target: n.Address, TargetFrom: 22, TargetTo: 22})
		}
		p.Forwards = append(p.Forwards, Forward{Purpose: "api", Cluster: c.Name,
			HostFrom: c.APIHostPort, HostTo: c.APIHostPort, Target: c.APIServer.Addr(), TargetFrom: apiServerPort, TargetTo: apiServerPort})
		if t, ok := nodePortTarget(c); ok {
			p.Forwards = append(p.Forwards, Forward{Purpose: "nodeports", Cluster: c.Name, Node: t.Name,
				HostFrom: c.NodePortFrom, HostTo: c.NodePortTo, Target: t.Address, TargetFrom: c.NodePortFrom, TargetTo: c.NodePortTo})
		}
		for ni, n := range c.Nodes {
			ports.claim(spec.Field(spec.Index(spec.Field(cp, "nodes"), ni), "address")+" (its ssh forward)", n.SSHHostPort, n.SSHHostPort, &errs)
		}
		ports.claim(spec.Field(cp, "apiPort"), c.APIHostPort, c.APIHostPort, &errs)
		ports.claim(spec.Field(cp, "nodePortRange"), c.NodePortFrom, c.NodePortTo, &errs)
		p.Clusters = append(p.Clusters, c)
	}
	p.Forwards = append(p.Forwards, Forward{Purpose: "ssh", Node: "failsafe", HostFrom: sshPortBase, HostTo: sshPortBase,
		Target: p.Network.Failsafe, TargetFrom: 22, TargetTo: 22})
	sort.SliceStable(p.Forwards, func(i, j int) bool { return p.Forwards[i].HostFrom < p.Forwards[j].HostFrom })
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return p, nil
}

func planCluster(sc spec.Cluster, cp string, net Network, baseDir string,
	addrOwner map[netip.Addr]string, macOwner map[string]string, errs *spec.Errors) (Cluster, bool) {
	labNet := net.CIDR
	first := uint64(blockSize * sc.Index)
	c := Cluster{
		Name:              sc.Name,
		Index:             sc.Index,
		KubernetesVersion: sc.KubernetesVersion,
		Block:             [2]netip.Addr{mustNth(labNet, first), mustNth(labNet, first+blockSize-1)},
		PodCIDR:           netip.MustParsePrefix(sc.PodCIDR),
		ServiceCIDR:       netip.MustParsePrefix(sc.ServiceCIDR),
		PodNetwork:        sc.PodNetwork,
		IPFamily:          sc.IPFamily,
		ClusterDomain:     clusterDomain,
		APIHostPort:       sc.APIPort,
		Provisioning:      sc.Provisioning,
	}
	c.APIServiceIP = mustNth(c.ServiceCIDR, 1)
	c.DNSServiceIP = mustNth(c.ServiceCIDR, dnsServiceIndex)
	if sc.IPFamily == spec.DualStack {
		c.PodCIDR6 = netip.MustParsePrefix(sc.PodCIDR6)
		c.ServiceCIDR6 = netip.MustParsePrefix(sc.ServiceCIDR6)
	}
	c.NodePortFrom, c.NodePortTo, _ = spec.ParsePortRange(sc.NodePortRange)
	for _, b := range sc.Butane {
		c.Butane = append(c.Butane, spec.ResolvePath(baseDir, b))
	}

	nodesPath := spec.Field(cp, "nodes")
	if len(sc.Nodes) > blockSize {
		errs.Add(nodesPath, "cluster %q has %d nodes but its block %s-%s holds %d; split it into two clusters", sc.Name, len(sc.Nodes), c.Block[0], c.Block[1], blockSize)
		return c, false
	}
	// Two or more control planes share one API endpoint: a virtual address
	// that keepalived moves to a live control plane. It is the block's last
	// address, reserved before any node is placed.
	if countControlPlanes(sc) >= 2 {
		vip := mustNth(labNet, first+blockSize-1)
		if owner, taken := addrOwner[vip]; taken {
			errs.Add(spec.Field(cp, "nodes"), "cluster %q has %d control planes and so needs its block's last address %s for the API's virtual address, but %s uses it", sc.Name, countControlPlanes(sc), vip, owner)
			return c, false
		}
		addrOwner[vip] = fmt.Sprintf("cluster %q's API virtual address (a cluster with two or more control planes keeps its block's last address for it)", sc.Name)
		c.APIVIP = vip
	}
	offsets, ok := assignOffsets(sc, cp, labNet, first, addrOwner, errs)
	if !ok {
		return c, false
	}
	for ni, sn := range sc.Nodes {
		np := spec.Index(nodesPath, ni)
		off := offsets[ni]
		n := Node{
			Name:         sn.Name,
			Cluster:      sc.Name,
			Roles:        append([]string(nil), sn.Roles...),
			Address:      mustNth(labNet, off),
			SSHHostPort:  sshPortBase + int(off),
			CPUs:         sn.CPUs,
			Image:        sn.Image,
			Provisioning: sn.Provisioning,
		}
		mem, _ := spec.ParseSize(sn.Memory)
		disk, _ := spec.ParseSize(sn.Disk)
		n.MemoryMiB = mem >> 20
		n.DiskGiB = (disk + (1<<30 - 1)) >> 30
		n.MAC = macFor(off)
		if sn.MAC != "" {
			hw, _ := netParseMAC(sn.MAC)
			n.MAC = hw
		}
		if owner, dup := macOwner[n.MAC]; dup {
			errs.Add(spec.Field(np, "mac"), "%s is already used by %s; every node needs its own MAC", n.MAC, owner)
		}
		macOwner[n.MAC] = np
		if n.HasRole(spec.RoleWorker) {
			pod, err := ipmath.Subnet(c.PodCIDR, nodePodPrefix, off)
			if err != nil {
				errs.Add(spec.Field(cp, "podCIDR"), "node %s (%s) gets pod /24 number %d by its address, but %v; use a /16 or /17", n.Name, n.Address, off, err)
			}
			n.PodCIDR = pod
			if c.PodCIDR6.IsValid() {
				pod6, err := ipmath.Subnet(c.PodCIDR6, nodePodPrefix6, off)
				if err != nil {
					errs.Add(spec.Field(cp, "podCIDR6"), "node %s: %v; use a /56", n.Name, err)
				}
				n.PodCIDR6 = pod6
			}
		}
		if c.IPFamily == spec.DualStack && net.CIDR6.IsValid() {
			a6, err := ipmath.Nth(net.CIDR6, off)
			if err != nil {
				errs.Add("network.cidr6", "node %s: %v", n.Name, err)
			}
			n.Address6 = a6
		}
		c.Nodes = append(c.Nodes, n)
	}
	cps := c.NodesWithRole(spec.RoleControlPlane)
	switch {
	case c.APIVIP.IsValid():
		c.APIServer = netip.AddrPortFrom(c.APIVIP, apiServerPort)
	case len(cps) > 0:
		c.APIServer = netip.AddrPortFrom(cps[0].Address, apiServerPort)
	}
	return c, true
}

func countControlPlanes(sc spec.Cluster) int {
	n := 0
	for _, sn := range sc.Nodes {
		if sn.HasRole(spec.RoleControlPlane) {
			n++
		}
	}
	return n
}

// assignOffsets gives every node its offset in the lab network: explicit
// addresses first, then the rest in the guide's order (control planes, then
// etcd-only members, then everyone else) to the lowest free place in the block.
func assignOffsets(sc spec.Cluster, cp string, labNet netip.Prefix, first uint64,
	addrOwner map[netip.Addr]string, errs *spec.Errors) ([]uint64, bool) {
	nodesPath := spec.Field(cp, "nodes")
	offsets := make([]uint64, len(sc.Nodes))
	taken := map[uint64]bool{}
	ok := true
	for ni, sn := range sc.Nodes {
		if sn.Address == "" {
			continue
		}
		ap := spec.Field(spec.Index(nodesPath, ni), "address")
		a := netip.MustParseAddr(sn.Address)
		switch {
		case !labNet.Contains(a):
			errs.Add(ap, "%s is outside the lab network %s", a, labNet)
			ok = false
			continue
		case ipmath.Offset(labNet, a) < first || ipmath.Offset(labNet, a) >= first+blockSize:
			errs.Add(ap, "%s is outside cluster %q's block %s-%s (cluster index %d)", a, sc.Name, mustNth(labNet, first), mustNth(labNet, first+blockSize-1), sc.Index)
			ok = false
			continue
		}
		if owner, dup := addrOwner[a]; dup {
			errs.Add(ap, "%s is already used by %s; every node needs its own address", a, owner)
			ok = false
			continue
		}
		addrOwner[a] = spec.Index(nodesPath, ni)
		offsets[ni] = ipmath.Offset(labNet, a)
		taken[offsets[ni]] = true
	}
	next := first
	for _, group := range [][]string{{spec.RoleControlPlane}, {spec.RoleEtcd}, nil} {
		for ni, sn := range sc.Nodes {
			if sn.Address != "" || offsets[ni] != 0 || !inGroup(sn, group) {
				continue
			}
			for next < first+blockSize && (taken[next] || addrOwner[mustNth(labNet, next)] != "") {
				next++
			}
			if next >= first+blockSize {
				errs.Add(spec.Index(nodesPath, ni), "no free address left in cluster %q's block %s-%s (the gateway, the failsafe, the API virtual address or other nodes use it)", sc.Name, mustNth(labNet, first), mustNth(labNet, first+blockSize-1))
				return offsets, false
			}
			offsets[ni] = next
			taken[next] = true
			addrOwner[mustNth(labNet, next)] = spec.Index(nodesPath, ni)
		}
	}
	return offsets, ok
}

func inGroup(n spec.Node, roles []string) bool {
	if roles == nil {
		return true
	}
	for _, r := range roles {
		if n.HasRole(r) {
			return true
		}
	}
	return false
}

func nodePortTarget(c Cluster) (Node, bool) {
	if w := c.NodesWithRole(spec.RoleWorker); len(w) > 0 {
		return w[0], true
	}
	return Node{}, false
}

// macFor gives the guide's MAC for the address at offset: 00:16:3e:4e:31:NN
// where NN are the offset's decimal digits (.14 -> :14), so a MAC reads as
// its address. Offsets of 100 and above (only the failsafe) use hex.
func macFor(off uint64) string {
	if off < 100 {
		return fmt.Sprintf("%s:%02d", macPrefix, off)
	}
	return fmt.Sprintf("%s:%02x", macPrefix, off&0xff)
}

func netParseMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return "", err
	}
	return hw.String(), nil
}

func addrOr(s string, def netip.Addr) netip.Addr {
	if s == "" {
		return def
	}
	return netip.MustParseAddr(s)
}

func lastHost(p netip.Prefix) netip.Addr { return ipmath.Last(p).Prev() }

func mustNth(p netip.Prefix, n uint64) netip.Addr {
	a, err := ipmath.Nth(p, n)
	if err != nil {
		// Validation guarantees the lab network is at least a /24 and the
		// service network at least a /28, so this is a programming error.
		panic(err)
	}
	return a
}

// portBook finds host port forwards that collide.
type portBook struct {
	claims []struct {
		owner    string
		from, to int
	}
}

func (b *portBook) claim(owner string, from, to int, errs *spec.Errors) {
	for _, c := range b.claims {
		if from <= c.to && c.from <= to {
			errs.Add(owner, "host port(s) %d-%d collide with %s (%d-%d); every forward needs its own host ports", from, to, c.owner, c.from, c.to)
			return
		}
	}
	b.claims = append(b.claims, struct {
		owner    string
		from, to int
	}{owner, from, to})
}
