package hostnet

import (
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/kubelab/kubelab/internal/ipmath"
	"github.com/kubelab/kubelab/internal/plan"
)

// maxIfName is IFNAMSIZ-1: the kernel refuses longer interface names.
const maxIfName = 15

// TapName is the tap device of node on the lab bridge: the bridge name,
// "-t" and the node's offset in the lab network (kl-lab-t10 for .10). The
// QEMU driver uses the same function, so both sides agree on the name.
func TapName(bridge string, node plan.Node, net plan.Network) string {
	off := uint64(0)
	if net.CIDR.IsValid() && net.CIDR.Contains(node.Address) {
		off = ipmath.Offset(net.CIDR, node.Address)
	}
	return linkName(bridge, fmt.Sprintf("-t%d", off))
}

// TableName is the nftables table (family ip) holding every rule of lab.
func TableName(lab string) string { return "kubelab-" + lab }

// vethNames are the host side and the lab-namespace side of the link
// between the caller's namespace and the lab namespace.
func vethNames(bridge string) (host, lab string) {
	return linkName(bridge, "-vh"), linkName(bridge, "-vl")
}

// linkName appends suffix to base, keeping within IFNAMSIZ. When base must be
// cut, four hex digits of its hash replace the cut part so two long bridge
// names sharing a prefix still give different link names.
func linkName(base, suffix string) string {
	if len(base)+len(suffix) <= maxIfName {
		return base + suffix
	}
	keep := maxIfName - len(suffix) - 4
	if keep < 0 {
		keep = 0
	}
	return fmt.Sprintf("%s%04x%s", base[:keep], hash32(base)&0xffff, suffix)
}

func hash32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// linkLocal is where transfer networks come from: 169.254.0.0/16 is never
// routed, so a /30 out of it cannot clash with a real network.
var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// metadataNet is the /30 holding 169.254.169.254 (cloud metadata), which a
// host may route somewhere; it is never picked.
var metadataNet = netip.MustParsePrefix("169.254.169.252/30")

// transferCandidate is the n-th /30 tried for lab: a start derived from the
// lab's name, then the following ones, so the choice is deterministic and
// different labs usually start on different subnets.
func transferCandidate(lab string, n uint64) netip.Prefix {
	const count = 1 << 14 // /30s in a /16
	idx := (uint64(hash32("kubelab-transfer/"+lab)) + n) % count
	p, _ := ipmath.Subnet(linkLocal, 30, idx)
	return p
}

// transferAddrs are the host side (.1) and lab side (.2) of a transfer /30.
func transferAddrs(p netip.Prefix) (host, lab netip.Prefix) {
	h, _ := ipmath.Nth(p, 1)
	l, _ := ipmath.Nth(p, 2)
	return netip.PrefixFrom(h, p.Bits()), netip.PrefixFrom(l, p.Bits())
}
