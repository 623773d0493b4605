package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestForwardsCarryTraffic builds the whole path with real kernel objects:
// a "VM" (a namespace on the lab bridge with a node's address, serving TCP),
// a "LAN" (a namespace linked to the host by a veth), and checks what
// `kubelab check` checks: the LAN reaches the VM through the host's port
// forwards, the host reaches it through its own address, and the VM reaches
// the LAN masqueraded behind the host.
func TestForwardsCarryTraffic(t *testing.T) {
	requireNetAdmin(t)
	for _, mode := range []string{"bridge in the host namespace", "lab namespace"} {
		t.Run(mode, func(t *testing.T) {
			_, host := newNS(t, "host")
			labName := ""
			if mode == "lab namespace" {
				labName, _ = newNS(t, "lab")
			}
			c := testConfig(t, labName)
			apply(t, host, c)
			bridgeNS := host
			if labName != "" {
				h, err := netns.GetFromName(labName)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { h.Close() })
				bridgeNS = h
			}

			// The VM stand-in: node cp1's address on the lab bridge.
			_, vm := newNS(t, "vm")
			bh := handle(t, bridgeNS)
			if err := bh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vmport"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(vm))}); err != nil {
				t.Fatalf("vm veth: %v", err)
			}
			port, _ := bh.LinkByName("vmport")
			br, _ := bh.LinkByName(c.Network.Bridge)
			must(t, bh.LinkSetMaster(port, br))
			must(t, bh.LinkSetUp(port))
			vh := handle(t, vm)
			configure(t, vh, "eth0", "192.168.100.10/24", "192.168.100.1")

			// The LAN: 10.99.0.0/24, host at .1, a client at .2. It has no
			// route to the lab network; only the forwards lead there.
			_, lan := newNS(t, "lan")
			hh := handle(t, host)
			if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(lan))}); err != nil {
				t.Fatalf("lan veth: %v", err)
			}
			lan0, _ := hh.LinkByName("lan0")
			must(t, hh.AddrAdd(lan0, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix("10.99.0.1/24"))}))
			must(t, hh.LinkSetUp(lan0))
			configure(t, handle(t, lan), "eth0", "10.99.0.2/24", "")

			for _, p := range []int{22, 6443, 31005} {
				p := p
				serve(t, vm, fmt.Sprintf(":%d", p), func(net.Conn) string { return fmt.Sprintf("vm:%d", p) })
			}
			serve(t, lan, ":7777", func(c net.Conn) string { return "from " + c.RemoteAddr().(*net.TCPAddr).IP.String() })

			for _, tc := range []struct {
				what string
				from netns.NsHandle
				addr string
				want string // "" = must fail
			}{
				{"LAN to ssh forward", lan, "10.99.0.1:8010", "vm:22"},
				{"LAN to API forward", lan, "10.99.0.1:8101", "vm:6443"},
				{"LAN to NodePort range", lan, "10.99.0.1:31005", "vm:31005"},
				{"host to its own address", host, "10.99.0.1:8010", "vm:22"},
				{"host to its NodePort", host, "10.99.0.1:31005", "vm:31005"},
				{"VM to LAN, masqueraded", vm, "10.99.0.2:7777", "from 10.99.0.1"},
				{"LAN to a port not forwarded", lan, "10.99.0.1:8099", ""},
				{"LAN straight to the VM (no route)", lan, "192.168.100.10:22", ""},
			} {
				got, err := dial(tc.from, tc.addr)
				switch {
				case tc.want == "" && err == nil:
					t.Errorf("%s: %s answered %q, want no connection", tc.what, tc.addr, got)
				case tc.want != "" && err != nil:
					t.Errorf("%s: dial %s: %v", tc.what, tc.addr, err)
				case tc.want != "" && got != tc.want:
					t.Errorf("%s: %s answered %q, want %q", tc.what, tc.addr, got, tc.want)
				}
			}

			// The stand-ins' links are not kubelab's; remove them, then Remove
			// must leave the host as it was before Apply plus the LAN veth.
			must(t, bh.LinkDel(port))
			remove(t, host, c)
			snap := snapshot(t, host)
			if strings.Contains(snap, "kl-test") || strings.Contains(snap, "kubelab-") {
				t.Errorf("residue after Remove:\n%s", snap)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// configure gives a namespace's interface an address, brings it and lo up
// and sets the default route.
func configure(t *testing.T, h *netlink.Handle, ifname, addr, gw string) {
	t.Helper()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix(addr))}))
	must(t, h.LinkSetUp(l))
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.LinkSetUp(lo))
	if gw != "" {
		must(t, h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}))
	}
}
