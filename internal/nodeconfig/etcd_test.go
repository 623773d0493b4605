package nodeconfig

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
)

// execArgs returns the words of a unit's ExecStart, continuation lines
// joined.
func execArgs(unit string) []string {
	_, rest, ok := strings.Cut(unit, "\nExecStart=")
	if !ok {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(rest, "\n") {
		lines = append(lines, strings.TrimSuffix(l, "\\"))
		if !strings.HasSuffix(l, "\\") {
			break
		}
	}
	return strings.Fields(strings.Join(lines, " "))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestEtcdClusterAndFlannelConfig starts the real etcd members exactly as
// the generated units say, with the real cluster PKI, inside a network
// namespace of its own that holds the nodes' addresses; then runs the
// generated one-shot that stores flannel's network config with the real
// etcdctl, and reads it back over mTLS. Nothing leaves the namespace.
func TestEtcdClusterAndFlannelConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	etcd := componentBinary(t, "etcd")
	etcdctl := componentBinary(t, "etcdctl")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root for a network namespace")
		}
		t.Skip("needs root for a network namespace")
	}
	for _, tc := range []struct {
		name  string
		nodes []string
	}{
		{"stacked", defaultNodes},
		{"ha", []string{"cp1:control-plane,etcd", "cp2:control-plane,etcd", "cp3:control-plane,etcd", "w1:worker"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testEtcdCluster(t, etcd, etcdctl, tc.nodes) })
	}
}

func testEtcdCluster(t *testing.T, etcd, etcdctl string, nodes []string) {
	p := planFor(t, labSpec("flannel", "", nodes...))
	c := p.Clusters[0]
	var creds *pki.Cluster
	built := buildAll(t, p, func(pc plan.Cluster) Credentials {
		creds = realPKI(t, p)(pc).(*pki.Cluster)
		return creds
	})

	// A hub namespace with a bridge, and one namespace per member wired
	// to it by a veth pair: each member has its own address, as on the
	// lab network, and nothing is connected to the outside.
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	hub := "kl-nc-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", hub)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", hub).Run() })
	run(t, "ip", "-n", hub, "link", "add", "name", "br0", "type", "bridge")
	run(t, "ip", "-n", hub, "link", "set", "br0", "up")
	nsOf := map[string]string{}
	// Each node's files under a scratch root of its own; paths in units
	// are rewritten to point into it.
	roots := map[string]*strings.Replacer{}
	rootDir := map[string]string{}
	for _, pn := range c.NodesWithRole("etcd") {
		n := built[pn.Name]
		root := t.TempDir()
		rootDir[pn.Name] = root
		for _, f := range n.Files {
			dst := filepath.Join(root, f.Path)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, f.Contents, os.FileMode(f.Mode)); err != nil {
				t.Fatal(err)
			}
		}
		roots[pn.Name] = strings.NewReplacer("/etc/kubernetes/", root+"/etc/kubernetes/", EtcdDataDir, root+EtcdDataDir,
			"/usr/local/bin/etcdctl", etcdctl, ScriptDir+"/", root+ScriptDir+"/")
		ns := fmt.Sprintf("%s-%d", hub, len(nsOf))
		nsOf[pn.Name] = ns
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
		peer := fmt.Sprintf("v%d", len(nsOf))
		run(t, "ip", "-n", ns, "link", "add", "name", "eth0", "type", "veth", "peer", "name", peer)
		run(t, "ip", "-n", ns, "link", "set", peer, "netns", hub)
		run(t, "ip", "-n", hub, "link", "set", peer, "master", "br0", "up")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", ns, "addr", "add", n.Network.Addresses[0].String(), "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")

		u, _ := unitByName(n, "etcd.service")
		args := execArgs(roots[pn.Name].Replace(u.Contents))
		if len(args) < 10 || !strings.HasSuffix(args[0], "/etcd") {
			t.Fatalf("etcd ExecStart %q", args)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, etcd}, args[1:]...)...)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		name := pn.Name
		t.Cleanup(func() {
			cancel()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("etcd %s log (tail):\n%s", name, tail(log.String(), 3000))
			}
		})
	}

	// The one-shot from the first member's unit, run as systemd would,
	// retrying until the cluster has a quorum.
	first := c.NodesWithRole("etcd")[0].Name
	ns := nsOf[first]
	script, ok := fileByPath(built[first], ScriptDir+"/flannel-config")
	if !ok {
		t.Fatal("no flannel-config script on the first etcd member")
	}
	start := time.Now()
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", strings.ReplaceAll(roots[first].Replace(string(script.Contents)), "sleep 5", "sleep 1")).CombinedOutput()
	if err != nil {
		t.Fatalf("flannel-config: %v\n%s", err, out)
	}
	t.Logf("%d-member etcd answered and flannel's config was stored after %v", len(roots), time.Since(start).Round(time.Millisecond))

	root := rootDir[first]
	ep := "--endpoints=" + strings.Join(etcdClientURLs(c), ",")
	ca := "--cacert=" + filepath.Join(root, certPath(pki.EtcdCA))
	clientArgs := func(name string) []string {
		return []string{"netns", "exec", ns, etcdctl, ep, ca, "--cert=" + filepath.Join(root, certPath(name)), "--key=" + filepath.Join(root, keyPath(name))}
	}
	got := run(t, "ip", append(clientArgs(pki.EtcdFlannelClient), "get", FlannelPrefix+"/config", "--print-value-only")...)
	want, _ := FlannelNetworkConfig(c)
	if strings.TrimSpace(got) != string(want) {
		t.Errorf("flannel config in etcd = %q, want %q", got, want)
	}
	// Every member is in the cluster and healthy, reached with the API
	// server's etcd client certificate.
	members := run(t, "ip", append(clientArgs(pki.EtcdAPIServerClient), "member", "list")...)
	for _, m := range c.NodesWithRole("etcd") {
		if !strings.Contains(members, ", started, "+m.Name+", ") {
			t.Errorf("member %s not started in:\n%s", m.Name, members)
		}
	}
	run(t, "ip", append(clientArgs(pki.EtcdAPIServerClient), "endpoint", "health", "--cluster")...)
	// No client certificate, or one of another CA: no access.
	out, err = exec.Command("ip", "netns", "exec", ns, etcdctl, ep, ca, "--command-timeout=5s", "get", "/x").CombinedOutput()
	if err == nil {
		t.Errorf("etcd answered a client without certificate:\n%s", out)
	}
	out, err = exec.Command("ip", append(clientArgs(pki.APIServerKubeletClient), "--command-timeout=5s", "get", "/x")...).CombinedOutput()
	if err == nil {
		t.Errorf("etcd answered a client with a Kubernetes CA certificate:\n%s", out)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
