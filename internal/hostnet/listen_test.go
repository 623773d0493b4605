package hostnet

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// ListenTCP listens inside the lab's namespace, and its errors say what is
// wrong: a missing namespace, an address the namespace lacks, and a taken
// port with the process that holds it (a real busybox httpd in the namespace).
func TestListenTCP(t *testing.T) {
	requireNetAdmin(t)
	busybox := requireTool(t, "busybox")
	name, ns := newNS(t, "listen")
	h := handle(t, ns)
	link := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "lab0"}} // no dummy module on every kernel
	must(t, h.LinkAdd(link))
	must(t, h.LinkSetUp(link))
	addr, _ := netlink.ParseAddr("10.250.7.1/24")
	must(t, h.AddrAdd(link, addr))
	lo, err := h.LinkByName("lo")
	must(t, err)
	must(t, h.LinkSetUp(lo)) // local traffic goes through lo

	l, err := ListenTCP(name, netip.MustParseAddrPort("10.250.7.1:8080"))
	if err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.WriteString(c, "from the namespace\n")
			c.Close()
		}
	}()
	// Reachable inside the namespace. (Not dialled from the host's
	// namespace: traffic to that address would leave for the real network.)
	if got, err := dial(ns, "10.250.7.1:8080"); err != nil || strings.TrimSpace(got) != "from the namespace" {
		t.Errorf("dial inside the namespace: %q %v", got, err)
	}
	l.Close()

	// A port taken by another process.
	nc := exec.Command("ip", "netns", "exec", name, busybox, "httpd", "-f", "-p", "10.250.7.1:8081", "-h", t.TempDir())
	stderr, _ := nc.StderrPipe()
	if err := nc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Process.Kill(); nc.Wait() })
	go io.Copy(io.Discard, bufio.NewReader(stderr))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var l2 net.Listener
		l2, err = ListenTCP(name, netip.MustParseAddrPort("10.250.7.1:8081"))
		if err != nil || time.Now().After(deadline) {
			break
		}
		l2.Close() // nc is not listening yet
		time.Sleep(200 * time.Millisecond)
	}
	if err == nil || !strings.Contains(err.Error(), "the port is taken") || !strings.Contains(err.Error(), "held by busybox") {
		t.Errorf("taken port: %v, want it named with its holder busybox", err)
	} else {
		t.Logf("taken port: %v", err)
	}

	for _, tc := range []struct {
		ns, addr, want string
	}{
		{name, "10.250.8.1:8080", "no interface in network namespace " + name + " has 10.250.8.1"},
		{"kltest-no-such-namespace", "10.250.7.1:8080", "does not exist"},
	} {
		if _, err := ListenTCP(tc.ns, netip.MustParseAddrPort(tc.addr)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("listen on %s in %s: %v, want %q", tc.addr, tc.ns, err, tc.want)
		}
	}
}
