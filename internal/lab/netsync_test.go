package lab

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/plan"
)

// TestNetworkSyncScript runs the script that brings a running node up to
// the lab's current network in a scratch network namespace with a dummy
// eth0 standing for w1, and its files in a scratch root: a missing route
// is added, a route via the wrong node replaced, a route via a node that
// left removed, a route without a gateway (the node's own pod bridge)
// kept, and the networkd file and /etc/hosts rewritten. A second run
// changes nothing and says nothing.
func TestNetworkSyncScript(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a network namespace)")
		}
		t.Skip("needs root (a network namespace)")
	}
	res := renderLab(t, t.TempDir(), template(t, "ha"), false)
	var w1 nodeconfig.Node
	for _, rn := range res.Nodes {
		if rn.Node == "w1" {
			w1 = rn.Config
		}
	}
	// w1 routes to w2's pod CIDR only (control planes run no pods here).
	if len(w1.Network.Routes) != 1 {
		t.Fatalf("w1's routes %v, want one (to w2)", w1.Network.Routes)
	}
	toW2 := w1.Network.Routes[0]
	podCIDR := netip.MustParsePrefix("172.16.0.0/16")

	b := make([]byte, 4)
	rand.Read(b)
	ns := "kltest-netsync-" + hex.EncodeToString(b)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := func(args ...string) string { return run(append([]string{"ip", "netns", "exec", ns}, args...)...) }
	in("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	in("ip", "link", "set", "peer0", "up")
	in("ip", "addr", "add", w1.Network.Addresses[0].String(), "dev", "eth0")
	in("ip", "link", "set", "eth0", "up")
	in("ip", "route", "add", toW2.To.String(), "via", "192.168.100.50", "dev", "eth0") // via the wrong node
	in("ip", "route", "add", "172.16.99.0/24", "via", "192.168.100.99", "dev", "eth0") // a node that left
	in("ip", "route", "add", "172.16.77.0/24", "dev", "eth0")                          // no gateway: not kubelab's

	root := t.TempDir()
	for _, d := range []string{"etc/systemd/network"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := networkSyncScript(root, w1, []netip.Prefix{podCIDR}, true)
	if err != nil {
		t.Fatal(err)
	}
	out := in("sh", "-c", script)
	for _, want := range []string{"route " + toW2.To.String() + " via " + toW2.Via.String(), "removed route 172.16.99.0/24 via 192.168.100.99",
		"rewrote /etc/hosts", "rewrote " + w1.NetworkdFiles()[0].Path} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	routes := strings.Split(strings.TrimSpace(in("ip", "-4", "route", "show", "root", podCIDR.String())), "\n")
	for i := range routes {
		routes[i] = strings.Join(strings.Fields(routes[i]), " ")
	}
	want := []string{toW2.To.String() + " via " + toW2.Via.String() + " dev eth0", "172.16.77.0/24 dev eth0 scope link"}
	slices.Sort(routes)
	slices.Sort(want)
	if !slices.Equal(routes, want) {
		t.Errorf("routes into the pod network %q, want %q", routes, want)
	}
	for _, f := range []nodeconfig.File{w1.NetworkdFiles()[0], mustFile(t, w1, nodeconfig.HostsFile)} {
		got, err := os.ReadFile(filepath.Join(root, f.Path))
		if err != nil || string(got) != string(f.Contents) {
			t.Errorf("%s after the sync: %v\n%s", f.Path, err, got)
		}
		if st, err := os.Stat(filepath.Join(root, f.Path)); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v %v, want 0644", f.Path, st.Mode(), err)
		}
	}
	if again := in("sh", "-c", script); strings.TrimSpace(again) != "" {
		t.Errorf("a second run changed something:\n%s", again)
	}
}

func mustFile(t *testing.T, cfg nodeconfig.Node, p string) nodeconfig.File {
	t.Helper()
	f, ok := fileOf(cfg, p)
	if !ok {
		t.Fatalf("%s has no %s", cfg.Name, p)
	}
	return f
}

// Only routes mode's pod network is kubelab's to change: flannel keeps
// its own routes.
func TestRoutedPodCIDRs(t *testing.T) {
	c := plan.Cluster{PodNetwork: "routes", PodCIDR: netip.MustParsePrefix("172.16.0.0/16")}
	if got := routedPodCIDRs(c); len(got) != 1 {
		t.Errorf("routes mode: %v", got)
	}
	c.PodNetwork = "flannel"
	if got := routedPodCIDRs(c); len(got) != 0 {
		t.Errorf("flannel: %v, want none", got)
	}
}
