package ipmath

import (
	"net/netip"
	"testing"
)

func TestArithmetic(t *testing.T) {
	p24 := netip.MustParsePrefix("192.168.100.0/24")
	p6 := netip.MustParsePrefix("fd00:1::/64")
	cases := []struct {
		name string
		got  string
		want string
	}{
		{"nth", must(Nth(p24, 14)).String(), "192.168.100.14"},
		{"nth v6", must(Nth(p6, 14)).String(), "fd00:1::e"},
		{"last", Last(p24).String(), "192.168.100.255"},
		{"last /16", Last(netip.MustParsePrefix("10.199.0.0/16")).String(), "10.199.255.255"},
		{"subnet", mustP(Subnet(netip.MustParsePrefix("172.16.0.0/16"), 24, 14)).String(), "172.16.14.0/24"},
		{"subnet v6", mustP(Subnet(netip.MustParsePrefix("fd00:10::/56"), 64, 14)).String(), "fd00:10:0:e::/64"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
		}
	}
	if off := Offset(p24, netip.MustParseAddr("192.168.100.99")); off != 99 {
		t.Errorf("offset = %d, want 99", off)
	}
	if _, err := Nth(p24, 256); err == nil {
		t.Error("Nth past the end of a /24 did not fail")
	}
	if _, err := Subnet(netip.MustParsePrefix("172.16.0.0/20"), 24, 16); err == nil {
		t.Error("subnet 16 of a /20 (which holds 16 /24s) did not fail")
	}
	if _, err := Subnet(p24, 16, 0); err == nil {
		t.Error("a /16 out of a /24 did not fail")
	}
}

func must(a netip.Addr, err error) netip.Addr {
	if err != nil {
		panic(err)
	}
	return a
}

func mustP(p netip.Prefix, err error) netip.Prefix {
	if err != nil {
		panic(err)
	}
	return p
}
