package hostnet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestDHCPHandsOutFixedAddress runs dnsmasq with DnsmasqArgs on the lab
// bridge and a DHCP client (busybox udhcpc) on a VM stand-in with node cp1's
// MAC: it must get cp1's address and the gateway as router.
func TestDHCPHandsOutFixedAddress(t *testing.T) {
	requireNetAdmin(t)
	requireTool(t, "dnsmasq")
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

	// Apply with network.dhcp runs dnsmasq in the lab's namespace.
	c.Network.DHCP = true
	apply(t, host, c)
	pid, ok := c.dnsmasq().Running()
	if !ok {
		t.Fatal("no dnsmasq after Apply with DHCP")
	}
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns != nsInode(t, lab) {
		t.Errorf("dnsmasq runs in namespace %s, not the lab's (%s)", ns, nsInode(t, lab))
	}
	logText := func() string {
		data, _ := os.ReadFile(filepath.Join(c.StateDir, DnsmasqLogFile))
		return string(data)
	}
	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE ip=$ip router=$router subnet=$subnet\"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", vmName, busybox, "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "10", "-T", "1", "-s", script).CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s\ndnsmasq:\n%s", err, out, logText())
	}
	want := "LEASE ip=192.168.100.10 router=192.168.100.1 subnet=255.255.255.0"
	if !strings.Contains(string(out), want) {
		t.Errorf("udhcpc got no %q:\n%s\ndnsmasq:\n%s", want, out, logText())
	}
	if !strings.Contains(logText(), "DHCPACK(") || !strings.Contains(logText(), "192.168.100.10 "+c.Nodes[0].MAC) {
		t.Errorf("dnsmasq's log in the lab directory shows no DHCPACK of cp1:\n%s", logText())
	}
	// The same hosts again: the same dnsmasq. Another node: restarted with it.
	apply(t, host, c)
	if again, _ := c.dnsmasq().Running(); again != pid {
		t.Errorf("Apply with the same hosts restarted dnsmasq (%d -> %d)", pid, again)
	}
	c.Nodes = c.Nodes[:len(c.Nodes)-1]
	apply(t, host, c)
	if again, ok := c.dnsmasq().Running(); !ok || again == pid {
		t.Errorf("Apply with fewer hosts kept dnsmasq %d (now %d, running %v)", pid, again, ok)
	}
	pid, _ = c.dnsmasq().Running()
	remove(t, host, c)
	if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); len(data) > 0 {
		t.Errorf("dnsmasq (pid %d) still runs after Remove", pid)
	}
	if _, err := os.Stat(filepath.Join(c.StateDir, LeaseFile)); !os.IsNotExist(err) {
		t.Errorf("lease file left behind: %v", err)
	}
}

// nsInode names a namespace as /proc/<pid>/ns/net does ("net:[N]").
func nsInode(t *testing.T, h netns.NsHandle) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// A DHCP server already bound in the lab's namespace: Apply with DHCP
// fails naming dnsmasq's own complaint, and the other server runs on.
func TestDHCPPortTaken(t *testing.T) {
	requireNetAdmin(t)
	dnsmasq := requireTool(t, "dnsmasq")
	labName, _ := newNS(t, "lab")
	hostName, host := newNS(t, "host")
	c := testConfig(t, labName)
	other := exec.Command("ip", "netns", "exec", labName, dnsmasq, "--conf-file=/dev/null", "--port=0", "--keep-in-foreground",
		"--dhcp-range=10.99.0.10,10.99.0.20", "--dhcp-leasefile="+filepath.Join(t.TempDir(), "other.leases"))
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	time.Sleep(500 * time.Millisecond) // let it bind

	// Refused before anything is made: no bridge, no rules, no dnsmasq.
	c.Network.DHCP = true
	var err error
	runIn(t, host, func() error { _, err = Apply(context.Background(), c); return nil })
	if err == nil || !strings.Contains(err.Error(), "network.dhcp") || !strings.Contains(err.Error(), "UDP port 67 (held by dnsmasq, pid") {
		t.Fatalf("Apply with the DHCP port taken: %v", err)
	}
	t.Logf("refused: %v", err)
	if out, err := exec.Command("ip", "-n", labName, "link", "show", c.Network.Bridge).CombinedOutput(); err == nil {
		t.Errorf("the refused Apply made the bridge:\n%s", out)
	}
	for _, ns := range []string{labName, hostName} {
		if out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").CombinedOutput(); strings.Contains(string(out), TableName(c.Lab)) {
			t.Errorf("the refused Apply made the rules in %s:\n%s", ns, out)
		}
	}
	if other.ProcessState != nil {
		t.Error("the other DHCP server was stopped")
	}
	if _, ok := c.dnsmasq().Running(); ok {
		t.Error("a dnsmasq of the lab runs after the refusal")
	}
}
