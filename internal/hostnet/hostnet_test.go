package hostnet

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubelab/kubelab/internal/plan"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (-update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestApplyBridgeTapsRules(t *testing.T) {
	requireNetAdmin(t)
	hostName, host := newNS(t, "host")
	c := testConfig(t, "")
	before := snapshot(t, host)
	st := apply(t, host, c)
	h := handle(t, host)

	br, err := h.LinkByName("kl-test")
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge: type %s flags %v, want an up bridge", br.Type(), br.Attrs().Flags)
	}
	as, _ := h.AddrList(br, netlink.FAMILY_V4)
	if len(as) != 1 || as[0].IPNet.String() != "192.168.100.1/24" {
		t.Errorf("bridge addresses %v, want 192.168.100.1/24", as)
	}
	for _, n := range c.Nodes {
		name := TapName(c.Network.Bridge, n, c.Network)
		tap, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("tap of %s: %v", n.Name, err)
		}
		tt, ok := tap.(*netlink.Tuntap)
		if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			t.Errorf("%s is %T %+v, want a tap", name, tap, tap)
		}
		if tap.Attrs().MasterIndex != br.Attrs().Index || tap.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: master %d (bridge %d), flags %v: want attached and up", name, tap.Attrs().MasterIndex, br.Attrs().Index, tap.Attrs().Flags)
		}
	}
	if on, err := readIPForward(host); err != nil || !on {
		t.Errorf("ip_forward in the namespace = %v, %v; want on", on, err)
	}

	// Rules as the kernel has them, through the nftables library.
	conn := nftIn(t, host)
	tbl := &nftables.Table{Name: "kubelab-test", Family: nftables.TableFamilyIPv4}
	fwd, err := conn.ListChain(tbl, "forwards")
	if err != nil {
		t.Fatalf("chain forwards: %v", err)
	}
	rules, err := conn.GetRules(tbl, fwd)
	if err != nil {
		t.Fatal(err)
	}
	type dnat struct {
		from, to uint16
		target   netip.Addr
		port     uint16
	}
	var got []dnat
	for _, r := range rules {
		var d dnat
		imm := map[uint32][]byte{}
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Cmp:
				if len(e.Data) == 2 {
					d.from = uint16(e.Data[0])<<8 | uint16(e.Data[1])
					d.to = d.from
				}
			case *expr.Range:
				d.from = uint16(e.FromData[0])<<8 | uint16(e.FromData[1])
				d.to = uint16(e.ToData[0])<<8 | uint16(e.ToData[1])
			case *expr.Immediate:
				imm[e.Register] = e.Data
			case *expr.NAT:
				if e.Type != expr.NATTypeDestNAT {
					t.Errorf("rule %v: NAT type %v, want dnat", r.Exprs, e.Type)
				}
				d.target, _ = netip.AddrFromSlice(imm[e.RegAddrMin])
				if p := imm[e.RegProtoMin]; e.RegProtoMin != 0 {
					d.port = uint16(p[0])<<8 | uint16(p[1])
				}
			}
		}
		got = append(got, d)
	}
	cp, w := netip.MustParseAddr("192.168.100.10"), netip.MustParseAddr("192.168.100.11")
	want := []dnat{
		{8000, 8000, netip.MustParseAddr("192.168.100.254"), 22},
		{8010, 8010, cp, 22},
		{8011, 8011, w, 22},
		{8101, 8101, cp, 6443},
		{31000, 31999, cp, 0}, // same ports
	}
	if len(got) != len(want) {
		t.Fatalf("DNAT rules %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("DNAT rule %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	golden(t, "rules-default.nft", st.Table.Rules)

	// Files.
	rulesFile, err := os.ReadFile(filepath.Join(c.StateDir, RulesFile))
	if err != nil || !strings.HasSuffix(string(rulesFile), st.Table.Rules) {
		t.Errorf("rules.nft (%v) does not end with the kernel's rules:\n%s", err, rulesFile)
	}
	golden(t, "dhcp-hosts", mustRead(t, filepath.Join(c.StateDir, DHCPHostsFile)))
	// rules.nft is meant for people, but it is also valid nft input.
	nft := requireTool(t, "nft")
	if out, err := exec.Command("ip", "netns", "exec", hostName, nft, "-c", "-f", filepath.Join(c.StateDir, RulesFile)).CombinedOutput(); err != nil {
		t.Errorf("nft -c -f rules.nft: %v\n%s", err, out)
	}

	// Show reports the same.
	var shown State
	if err := runIn(t, host, func() (err error) { shown, err = Show(context.Background(), c); return err }); err != nil {
		t.Fatal(err)
	}
	if !shown.Bridge.Exists || len(shown.Taps) != 2 || !shown.Taps[0].Attached || shown.Taps[0].Carrier || !shown.Table.Exists {
		t.Errorf("Show: %+v", shown)
	}
	if !strings.Contains(shown.Text(), "kl-test-t10") {
		t.Errorf("Show text lacks the tap:\n%s", shown.Text())
	}

	remove(t, host, c)
	if after := snapshot(t, host); after != before {
		t.Errorf("Remove left residue:\n--- before\n%s\n--- after\n%s", before, after)
	}
	if on, _ := readIPForward(host); on {
		t.Errorf("ip_forward still on after Remove; it was off before Apply")
	}
	if _, err := os.Stat(c.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir still there: %v", err)
	}
	// Remove again: nothing to do, no error.
	remove(t, host, c)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// linkIndexes names every link with its index: a recreated link gets a new one.
func linkIndexes(t *testing.T, ns netns.NsHandle) map[string]int {
	links, err := handle(t, ns).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range links {
		out[l.Attrs().Name] = l.Attrs().Index
	}
	return out
}

// ruleHandles lists every rule handle of the lab table: a replaced table
// gets new handles.
func ruleHandles(t *testing.T, ns netns.NsHandle, table string) []uint64 {
	conn := nftIn(t, ns)
	tbl := &nftables.Table{Name: table, Family: nftables.TableFamilyIPv4}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rs, err := conn.GetRules(tbl, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			out = append(out, r.Handle)
		}
	}
	return out
}

func TestApplyIdempotentAndConverges(t *testing.T) {
	requireNetAdmin(t)
	_, host := newNS(t, "host")
	c := testConfig(t, "")
	first := apply(t, host, c)
	links1, rules1 := linkIndexes(t, host), ruleHandles(t, host, "kubelab-test")

	second := apply(t, host, c)
	links2, rules2 := linkIndexes(t, host), ruleHandles(t, host, "kubelab-test")
	if first.Text() != second.Text() {
		t.Errorf("second Apply changed the state:\n%s\n---\n%s", first.Text(), second.Text())
	}
	if len(links1) != len(links2) {
		t.Errorf("links %v then %v", links1, links2)
	}
	for n, i := range links1 {
		if links2[n] != i {
			t.Errorf("link %s recreated (index %d -> %d)", n, i, links2[n])
		}
	}
	if len(rules1) == 0 || fmt.Sprint(rules1) != fmt.Sprint(rules2) {
		t.Errorf("rules replaced by an Apply with nothing to change: handles %v then %v", rules1, rules2)
	}

	// A new node gets its tap; a removed node's tap goes; a changed forward
	// changes the table.
	c2 := c
	c2.Nodes = []plan.Node{c.Nodes[0], {Name: "w2", Address: netip.MustParseAddr("192.168.100.12"), MAC: "00:16:3e:4e:31:12"}}
	c2.Forwards = append(c.Forwards[:len(c.Forwards):len(c.Forwards)], plan.Forward{Purpose: "ssh", Node: "w2",
		HostFrom: 8012, HostTo: 8012, Target: netip.MustParseAddr("192.168.100.12"), TargetFrom: 22, TargetTo: 22})
	st := apply(t, host, c2)
	links3 := linkIndexes(t, host)
	if _, ok := links3["kl-test-t12"]; !ok {
		t.Errorf("no tap for the new node: %v", links3)
	}
	if _, ok := links3["kl-test-t11"]; ok {
		t.Errorf("tap of the removed node w1 is still there")
	}
	if links3["kl-test-t10"] != links1["kl-test-t10"] || links3["kl-test"] != links1["kl-test"] {
		t.Errorf("unchanged links were recreated")
	}
	if !strings.Contains(st.Table.Rules, "th dport 8012 dnat to 192.168.100.12:22") {
		t.Errorf("new forward missing:\n%s", st.Table.Rules)
	}

	// Converge from a partial state: a tap and the table deleted behind
	// kubelab's back.
	h := handle(t, host)
	tap, _ := h.LinkByName("kl-test-t10")
	if err := h.LinkDel(tap); err != nil {
		t.Fatal(err)
	}
	if err := deleteTable(nftIn(t, host), "kubelab-test"); err != nil {
		t.Fatal(err)
	}
	st = apply(t, host, c2)
	if !st.Taps[0].Exists || !st.Taps[0].Attached || !st.Table.Exists {
		t.Errorf("Apply did not converge: %s", st.Text())
	}
	remove(t, host, c2)
}

func TestLabNamespace(t *testing.T) {
	requireNetAdmin(t)
	for _, tc := range []struct {
		name      string
		preCreate bool // the namespace exists before Apply: not kubelab's to delete
	}{
		{"created by apply", false},
		{"made by someone else", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, host := newNS(t, "host")
			labName := ""
			var pre netns.NsHandle = -1
			if tc.preCreate {
				labName, pre = newNS(t, "lab")
			} else {
				b := make([]byte, 3)
				randRead(b)
				labName = "kltest-" + hexs(b) + "-lab"
				// Apply creates it; delete it even when the test fails early.
				t.Cleanup(func() {
					if namespaceExists(labName) {
						netns.DeleteNamed(labName)
						t.Errorf("namespace %s left behind", labName)
					}
				})
			}
			c := testConfig(t, labName)
			hostBefore := snapshot(t, host)
			var labBefore string
			if tc.preCreate {
				labBefore = snapshot(t, pre)
			}
			st := apply(t, host, c)
			if st.Namespace == nil || !st.Namespace.Exists || st.Namespace.Created == tc.preCreate {
				t.Errorf("namespace state %+v", st.Namespace)
			}
			lab, err := netns.GetFromName(labName)
			if err != nil {
				t.Fatalf("lab namespace: %v", err)
			}
			defer lab.Close()
			lh, hh := handle(t, lab), handle(t, host)
			if _, err := lh.LinkByName("kl-test"); err != nil {
				t.Errorf("bridge not in the lab namespace: %v", err)
			}
			if _, err := hh.LinkByName("kl-test"); err == nil {
				t.Errorf("bridge in the host namespace")
			}
			if _, err := lh.LinkByName("kl-test-t10"); err != nil {
				t.Errorf("tap not in the lab namespace: %v", err)
			}
			hv, err := hh.LinkByName("kl-test-vh")
			if err != nil {
				t.Fatalf("host veth: %v", err)
			}
			lv, err := lh.LinkByName("kl-test-vl")
			if err != nil {
				t.Fatalf("lab veth: %v", err)
			}
			hostAddr, labAddr := transferAddrs(st.Veth.Transfer)
			if a := addrs(hh, hv); len(a) != 1 || a[0] != hostAddr {
				t.Errorf("host veth addresses %v, want %s", a, hostAddr)
			}
			if a := addrs(lh, lv); len(a) != 1 || a[0] != labAddr {
				t.Errorf("lab veth addresses %v, want %s", a, labAddr)
			}
			if !linkLocal.Contains(st.Veth.Transfer.Addr()) || st.Veth.Transfer.Bits() != 30 {
				t.Errorf("transfer network %s", st.Veth.Transfer)
			}
			wantRoutes := []string{
				"192.168.100.0/24 via " + labAddr.Addr().String() + " dev kl-test-vh",
				"default via " + hostAddr.Addr().String() + " dev kl-test-vl (in " + labName + ")",
			}
			if strings.Join(st.Veth.Routes, "\n") != strings.Join(wantRoutes, "\n") {
				t.Errorf("routes %q, want %q", st.Veth.Routes, wantRoutes)
			}
			for _, ns := range []netns.NsHandle{host, lab} {
				if on, err := readIPForward(ns); err != nil || !on {
					t.Errorf("ip_forward %v %v", on, err)
				}
			}
			if !strings.Contains(st.Table.Rules, `iifname != "kl-test-vh"`) {
				t.Errorf("rules do not name the veth as the lab side:\n%s", st.Table.Rules)
			}
			// The lab namespace holds no rules of kubelab's: the host's table
			// does the NAT.
			if tables, _ := nftIn(t, lab).ListTables(); len(tables) != 0 {
				t.Errorf("tables in the lab namespace: %v", tables)
			}
			if !tc.preCreate {
				golden(t, "rules-namespace.nft", strings.ReplaceAll(st.Table.Rules, labName, "LAB"))
			}
			again := apply(t, host, c)
			if again.Text() != st.Text() {
				t.Errorf("second Apply differs:\n%s\n---\n%s", st.Text(), again.Text())
			}

			remove(t, host, c)
			if after := snapshot(t, host); after != hostBefore {
				t.Errorf("host residue:\n--- before\n%s\n--- after\n%s", hostBefore, after)
			}
			if namespaceExists(labName) == !tc.preCreate {
				t.Errorf("after Remove namespace exists = %v, want %v", namespaceExists(labName), tc.preCreate)
			}
			if tc.preCreate {
				if after := snapshot(t, pre); after != labBefore {
					t.Errorf("lab namespace residue:\n--- before\n%s\n--- after\n%s", labBefore, after)
				}
			}
		})
	}
}

func TestForeignLinksLeftAlone(t *testing.T) {
	requireNetAdmin(t)
	_, host := newNS(t, "host")
	h := handle(t, host)
	// Someone else's bridge with the lab's bridge name and an address.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "kl-test"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName("kl-test")
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix("10.1.2.3/24"))}); err != nil {
		t.Fatal(err)
	}
	// Another lab's table.
	conn := nftIn(t, host)
	conn.AddTable(&nftables.Table{Name: "kubelab-other", Family: nftables.TableFamilyIPv4})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, host)
	c := testConfig(t, "")
	err := runIn(t, host, func() error { _, err := Apply(context.Background(), c); return err })
	if err == nil || !strings.Contains(err.Error(), "not lab test's") {
		t.Fatalf("Apply over a foreign bridge: %v, want a refusal", err)
	}
	remove(t, host, c)
	if after := snapshot(t, host); after != before {
		t.Errorf("Remove touched what is not the lab's:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func TestDualStackGateway(t *testing.T) {
	requireNetAdmin(t)
	_, host := newNS(t, "host")
	c := testConfig(t, "")
	c.Network.CIDR6 = netip.MustParsePrefix("fd00:100::/64")
	c.Network.Gateway6 = netip.MustParseAddr("fd00:100::1")
	st := apply(t, host, c)
	want := []netip.Prefix{netip.MustParsePrefix("192.168.100.1/24"), netip.MustParsePrefix("fd00:100::1/64")}
	if fmt.Sprint(st.Bridge.Addresses) != fmt.Sprint(want) {
		t.Errorf("bridge addresses %v, want %v", st.Bridge.Addresses, want)
	}
	// A changed gateway replaces the old address instead of adding one.
	c.Network.Gateway = netip.MustParseAddr("192.168.100.2")
	st = apply(t, host, c)
	want[0] = netip.MustParsePrefix("192.168.100.2/24")
	if fmt.Sprint(st.Bridge.Addresses) != fmt.Sprint(want) {
		t.Errorf("after changing the gateway: %v, want %v", st.Bridge.Addresses, want)
	}
	remove(t, host, c)
}
