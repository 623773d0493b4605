package hostnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubelab/kubelab/internal/plan"
)

// requireNetAdmin skips (or, under CI=true, fails) when this process cannot
// make network namespaces with nftables in them. Every test works only in
// namespaces it makes itself.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("needs root to create network namespaces")
		return
	}
	_, h := newNS(t, "probe")
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err == nil {
		_, err = c.ListTables()
	}
	if err != nil {
		fail("nftables does not work in a new network namespace: %v", err)
	}
}

// newNS makes a fresh named network namespace, deleted when the test ends
// (also on failure). It never touches the calling thread's namespace.
func newNS(t testing.TB, tag string) (string, netns.NsHandle) {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := "kltest-" + hex.EncodeToString(b) + "-" + tag
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread dies with this goroutine
		nh, err := netns.NewNamed(name)
		h = nh
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return name, h
}

// runIn runs fn on a thread inside ns, as a caller of this package living
// in that namespace would.
func runIn(t testing.TB, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	return inNS(ns, fn)
}

func handle(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func nftIn(t testing.TB, ns netns.NsHandle) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	return c
}

// testConfig is a small lab: a control plane and a worker, the guide's
// forwards.
func testConfig(t testing.TB, namespace string) Config {
	net := plan.Network{
		CIDR:        netip.MustParsePrefix("192.168.100.0/24"),
		Gateway:     netip.MustParseAddr("192.168.100.1"),
		Bridge:      "kl-test",
		Namespace:   namespace,
		Failsafe:    netip.MustParseAddr("192.168.100.254"),
		FailsafeMAC: "00:16:3e:4e:31:fe",
	}
	cp := netip.MustParseAddr("192.168.100.10")
	w := netip.MustParseAddr("192.168.100.11")
	return Config{
		Lab:     "test",
		Network: net,
		Nodes: []plan.Node{
			{Name: "cp1", Cluster: "k1", Address: cp, MAC: "00:16:3e:4e:31:10", SSHHostPort: 8010},
			{Name: "w1", Cluster: "k1", Address: w, MAC: "00:16:3e:4e:31:11", SSHHostPort: 8011},
		},
		Forwards: []plan.Forward{
			{Purpose: "ssh", Node: "failsafe", HostFrom: 8000, HostTo: 8000, Target: net.Failsafe, TargetFrom: 22, TargetTo: 22},
			{Purpose: "ssh", Cluster: "k1", Node: "cp1", HostFrom: 8010, HostTo: 8010, Target: cp, TargetFrom: 22, TargetTo: 22},
			{Purpose: "ssh", Cluster: "k1", Node: "w1", HostFrom: 8011, HostTo: 8011, Target: w, TargetFrom: 22, TargetTo: 22},
			{Purpose: "api", Cluster: "k1", HostFrom: 8101, HostTo: 8101, Target: cp, TargetFrom: 6443, TargetTo: 6443},
			{Purpose: "nodeports", Cluster: "k1", HostFrom: 31000, HostTo: 31999, Target: cp, TargetFrom: 31000, TargetTo: 31999},
		},
		StateDir: t.TempDir() + "/hostnet",
	}
}

// snapshot is every link and nftables table in a namespace, to prove
// Remove leaves nothing behind.
func snapshot(t testing.TB, ns netns.NsHandle) string {
	t.Helper()
	links, err := handle(t, ns).LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	var out []string
	for _, l := range links {
		out = append(out, fmt.Sprintf("link %s %s alias=%q", l.Attrs().Name, l.Type(), l.Attrs().Alias))
	}
	tables, err := nftIn(t, ns).ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	for _, tb := range tables {
		out = append(out, fmt.Sprintf("table %d %s", tb.Family, tb.Name))
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func apply(t testing.TB, host netns.NsHandle, c Config) State {
	t.Helper()
	var st State
	if err := runIn(t, host, func() (err error) {
		st, err = Apply(context.Background(), c)
		return err
	}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return st
}

func remove(t testing.TB, host netns.NsHandle, c Config) {
	t.Helper()
	if err := runIn(t, host, func() error { return Remove(context.Background(), c) }); err != nil {
		t.Fatalf("Remove: %v", err)
	}
}

// serve answers every connection with reply(conn) from a listener opened
// inside ns.
func serve(t testing.TB, ns netns.NsHandle, addr string, reply func(net.Conn) string) {
	t.Helper()
	var l net.Listener
	if err := inNS(ns, func() (err error) { l, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, reply(c))
			c.Close()
		}
	}()
}

// dial connects from inside ns and returns the first line the server says.
func dial(ns netns.NsHandle, addr string) (string, error) {
	var c net.Conn
	if err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func randRead(b []byte) { rand.Read(b) }

func hexs(b []byte) string { return hex.EncodeToString(b) }

func netParseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }
