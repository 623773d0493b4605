package hostnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestDHCPHandsOutFixedAddress runs dnsmasq with DnsmasqArgs on the lab
// bridge and a DHCP client (busybox udhcpc) on a VM stand-in with node cp1's
// MAC: it must get cp1's address and the gateway as router.
func TestDHCPHandsOutFixedAddress(t *testing.T) {
	requireNetAdmin(t)
	dnsmasq := requireTool(t, "dnsmasq")
	busybox := requireTool(t, "busybox")
	labName, _ := newNS(t, "lab")
	_, host := newNS(t, "host")
	c := testConfig(t, labName)
	apply(t, host, c)
	lab, err := netns.GetFromName(labName)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()

	vmName, vm := newNS(t, "vm")
	lh := handle(t, lab)
	mac, _ := netParseMAC(c.Nodes[0].MAC)
	must(t, lh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vmport"}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(vm)), PeerHardwareAddr: mac}))
	port, _ := lh.LinkByName("vmport")
	br, _ := lh.LinkByName(c.Network.Bridge)
	must(t, lh.LinkSetMaster(port, br))
	must(t, lh.LinkSetUp(port))
	vh := handle(t, vm)
	eth0, err := vh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	must(t, vh.LinkSetUp(eth0))

	args := append([]string{"netns", "exec", labName, dnsmasq, "--keep-in-foreground", "--log-facility=-"}, DnsmasqArgs(c)...)
	srv := exec.Command("ip", args...)
	srvOut := &lockedBuffer{}
	srv.Stdout, srv.Stderr = srvOut, srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
	})

	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE ip=$ip router=$router subnet=$subnet\"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", vmName, busybox, "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "10", "-T", "1", "-s", script).CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s\ndnsmasq:\n%s", err, out, srvOut.String())
	}
	want := "LEASE ip=192.168.100.10 router=192.168.100.1 subnet=255.255.255.0"
	if !strings.Contains(string(out), want) {
		t.Errorf("udhcpc got no %q:\n%s\ndnsmasq:\n%s", want, out, srvOut.String())
	}
	srv.Process.Kill()
	srv.Wait()
	remove(t, host, c)
	if _, err := os.Stat(filepath.Join(c.StateDir, LeaseFile)); !os.IsNotExist(err) {
		t.Errorf("lease file left behind: %v", err)
	}
}
