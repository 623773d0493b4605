package hostnet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
)

func TestTapName(t *testing.T) {
	n24 := plan.Network{CIDR: netip.MustParsePrefix("192.168.100.0/24")}
	n16 := plan.Network{CIDR: netip.MustParsePrefix("10.20.0.0/16")}
	node := func(a string) plan.Node { return plan.Node{Address: netip.MustParseAddr(a)} }
	for _, tc := range []struct {
		bridge string
		net    plan.Network
		node   plan.Node
		want   string
	}{
		{"kl-lab", n24, node("192.168.100.10"), "kl-lab-t10"},
		{"kl-lab", n24, node("192.168.100.254"), "kl-lab-t254"},
		{"kl-0123456789", n24, node("192.168.100.11"), "kl-0123" + hex4("kl-0123456789") + "-t11"},
		{"kl-lab", n16, node("10.20.1.5"), "kl-lab-t261"},
		{"kl-verylongname", n16, node("10.20.255.254"), "kl-v" + hex4("kl-verylongname") + "-t65534"},
	} {
		got := TapName(tc.bridge, tc.node, tc.net)
		if got != tc.want || len(got) > maxIfName {
			t.Errorf("TapName(%s, %s) = %q (%d chars), want %q", tc.bridge, tc.node.Address, got, len(got), tc.want)
		}
	}
	// Long bridges sharing a prefix still get different taps.
	a := TapName("kl-mylonglab-01", node("192.168.100.10"), n24)
	b := TapName("kl-mylonglab-02", node("192.168.100.10"), n24)
	if a == b {
		t.Errorf("bridges kl-mylonglab-01/02 share tap name %s", a)
	}
}

func hex4(s string) string {
	const digits = "0123456789abcdef"
	v := hash32(s) & 0xffff
	return string([]byte{digits[v>>12&15], digits[v>>8&15], digits[v>>4&15], digits[v&15]})
}

func TestTransferCandidate(t *testing.T) {
	a, b := transferCandidate("lab", 0), transferCandidate("lab", 0)
	if a != b || a.Bits() != 30 || !linkLocal.Contains(a.Addr()) || a != a.Masked() {
		t.Errorf("candidate %s / %s: want the same link-local /30 every time", a, b)
	}
	if transferCandidate("lab", 1) == a {
		t.Errorf("the next candidate repeats the first")
	}
	h, l := transferAddrs(netip.MustParsePrefix("169.254.7.8/30"))
	if h.String() != "169.254.7.9/30" || l.String() != "169.254.7.10/30" {
		t.Errorf("transferAddrs = %s, %s", h, l)
	}
}

func TestForwardRuleRejects(t *testing.T) {
	cidr := netip.MustParsePrefix("192.168.100.0/24")
	in := netip.MustParseAddr("192.168.100.10")
	for _, tc := range []struct {
		f    plan.Forward
		want string
	}{
		{plan.Forward{HostFrom: 8010, HostTo: 8010, Target: netip.MustParseAddr("10.0.0.1"), TargetFrom: 22, TargetTo: 22}, "not an IPv4 address in the lab network"},
		{plan.Forward{HostFrom: 0, HostTo: 0, Target: in, TargetFrom: 22, TargetTo: 22}, "ports out of range"},
		{plan.Forward{HostFrom: 30000, HostTo: 30010, Target: in, TargetFrom: 30000, TargetTo: 30005}, "differ in size"},
		{plan.Forward{HostFrom: 30000, HostTo: 30010, Target: in, TargetFrom: 31000, TargetTo: 31010}, "same ports only"},
	} {
		_, err := forwardRule(cidr, tc.f)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("forwardRule(%+v) = %v, want an error with %q", tc.f, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := testConfig(t, "")
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no lab", func(c *Config) { c.Lab = "" }, "lab name"},
		{"long bridge", func(c *Config) { c.Network.Bridge = "kl-0123456789abc" }, "bridge name"},
		{"gateway outside", func(c *Config) { c.Network.Gateway = netip.MustParseAddr("10.0.0.1") }, "holding the gateway"},
		{"node outside", func(c *Config) { c.Nodes[0].Address = netip.MustParseAddr("10.0.0.5") }, "outside the lab network"},
		{"bad transfer", func(c *Config) { c.Transfer = netip.MustParsePrefix("169.254.0.0/29") }, "/30"},
	} {
		c := good
		c.Nodes = append([]plan.Node(nil), good.Nodes...)
		tc.change(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if err := good.validate(); err != nil {
		t.Errorf("good config: %v", err)
	}
}
