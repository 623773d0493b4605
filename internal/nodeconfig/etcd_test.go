package nodeconfig

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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

// TestEtcdMemberAndFlannelConfig starts the real etcd exactly as the
// generated unit says, with the real cluster PKI, inside a network
// namespace of its own that holds the node's address; then runs the
// generated one-shot that stores flannel's network config with the real
// etcdctl, and reads it back over mTLS. Nothing leaves the namespace.
func TestEtcdMemberAndFlannelConfig(t *testing.T) {
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
	p := planFor(t, labSpec("flannel", "", defaultNodes...))
	c := p.Clusters[0]
	var creds *pki.Cluster
	built := buildAll(t, p, func(pc plan.Cluster) Credentials {
		creds = realPKI(t, p)(pc).(*pki.Cluster)
		return creds
	})
	n := built["cp1"]
	addr := c.Nodes[0].Address

	// The node's files under a scratch root; paths in units are rewritten
	// to point into it.
	root := t.TempDir()
	for _, f := range n.Files {
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, f.Contents, os.FileMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	rw := strings.NewReplacer("/etc/kubernetes/", root+"/etc/kubernetes/", EtcdDataDir, root+EtcdDataDir,
		"/usr/local/bin/etcdctl", etcdctl, ScriptDir+"/", root+ScriptDir+"/")

	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := "kl-nc-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	// The node's address on the namespace's loopback: nothing is wired
	// to it, so no packet can leave.
	run(t, "ip", "-n", ns, "addr", "add", n.Network.Addresses[0].String(), "dev", "lo")

	u, _ := unitByName(n, "etcd.service")
	args := execArgs(rw.Replace(u.Contents))
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
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("etcd log:\n%s", log.String())
		}
	})

	// The one-shot from the unit, run as systemd would, retrying until etcd
	// answers.
	script, ok := fileByPath(n, ScriptDir+"/flannel-config")
	if !ok {
		t.Fatal("no flannel-config script")
	}
	start := time.Now()
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", strings.ReplaceAll(rw.Replace(string(script.Contents)), "sleep 5", "sleep 1")).CombinedOutput()
	if err != nil {
		t.Fatalf("flannel-config: %v\n%s", err, out)
	}
	t.Logf("etcd answered and flannel's config was stored after %v", time.Since(start).Round(time.Millisecond))

	ep := "--endpoints=https://" + addr.String() + ":2379"
	ca := "--cacert=" + filepath.Join(root, certPath(pki.EtcdCA))
	clientArgs := func(name string) []string {
		return []string{"netns", "exec", ns, etcdctl, ep, ca, "--cert=" + filepath.Join(root, certPath(name)), "--key=" + filepath.Join(root, keyPath(name))}
	}
	got := run(t, "ip", append(clientArgs(pki.EtcdFlannelClient), "get", FlannelPrefix+"/config", "--print-value-only")...)
	want, _ := FlannelNetworkConfig(c)
	if strings.TrimSpace(got) != string(want) {
		t.Errorf("flannel config in etcd = %q, want %q", got, want)
	}
	// The API server's etcd client works too, and no client certificate
	// means no access.
	run(t, "ip", append(clientArgs(pki.EtcdAPIServerClient), "endpoint", "health")...)
	out, err = exec.Command("ip", "netns", "exec", ns, etcdctl, ep, ca, "--command-timeout=5s", "get", "/x").CombinedOutput()
	if err == nil {
		t.Errorf("etcd answered a client without certificate:\n%s", out)
	}
	t.Logf("without a client certificate: %v", err)
	// Separate CAs: a client certificate of the Kubernetes CA is refused.
	out, err = exec.Command("ip", append(clientArgs(pki.APIServerKubeletClient), "--command-timeout=5s", "get", "/x")...).CombinedOutput()
	if err == nil {
		t.Errorf("etcd answered a client with a Kubernetes CA certificate:\n%s", out)
	}
}
