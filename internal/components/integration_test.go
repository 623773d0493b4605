package components

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/versions"
)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func skipSlow(t *testing.T) {
	t.Helper()
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("builds every component from source (~15 min cold); skipped under -short")
	}
}

// buildDefault builds (or finds cached) the default set in the real cache
// ($KUBELAB_CACHE), so repeated runs and other packages share it.
func buildDefault(t *testing.T) Result {
	t.Helper()
	skipSlow(t)
	requireTool(t, "go")
	requireTool(t, "gcc")
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	res, err := Build(ctx, Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestBuildFromModules(t *testing.T) {
	res := buildDefault(t)
	v := versions.Default()

	// Layout and manifest agree with the files on disk.
	for _, p := range partsFor(v, v.Kubernetes) {
		for _, f := range p.files {
			mf, ok := res.Manifest.Files[f]
			if !ok {
				t.Errorf("manifest lacks %s", f)
				continue
			}
			got, err := hashFile(filepath.Join(res.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if got != mf {
				t.Errorf("%s: on disk %v, manifest %v", f, got, mf)
			}
			if st, _ := os.Stat(filepath.Join(res.Dir, f)); st.Mode().Perm()&0o111 == 0 {
				t.Errorf("%s is not executable", f)
			}
		}
	}
	wantImages := map[string]string{
		v.PauseImage():     filepath.Join(ImagesDir, PauseImageFile),
		v.CoreDNSImage():   filepath.Join(ImagesDir, CoreDNSImageFile),
		versions.TestImage: filepath.Join(ImagesDir, TestImageFile),
	}
	for _, im := range res.Manifest.Images {
		if wantImages[im.Ref] != im.File {
			t.Errorf("manifest image %s -> %s unexpected", im.Ref, im.File)
		}
		delete(wantImages, im.Ref)
	}
	if len(wantImages) > 0 {
		t.Errorf("manifest lacks images %v", wantImages)
	}

	// The binaries report the pinned versions.
	for _, c := range []struct {
		bin  string
		args []string
		want string
	}{
		{"kubelet", []string{"--version"}, "Kubernetes " + v.Kubernetes},
		{"kube-apiserver", []string{"--version"}, "Kubernetes " + v.Kubernetes},
		{"kube-controller-manager", []string{"--version"}, "Kubernetes " + v.Kubernetes},
		{"kube-scheduler", []string{"--version"}, "Kubernetes " + v.Kubernetes},
		{"kube-proxy", []string{"--version"}, "Kubernetes " + v.Kubernetes},
		{"kubectl", []string{"version", "--client"}, "Client Version: " + v.Kubernetes},
		{"etcd", []string{"--version"}, "etcd Version: " + trimVersion(v.Etcd)},
		{"etcdctl", []string{"version"}, "etcdctl version: " + trimVersion(v.Etcd)},
		{"containerd", []string{"--version"}, v.Containerd},
		{"runc", []string{"--version"}, "runc version " + trimVersion(v.Runc)},
		{"crictl", []string{"--version"}, v.Crictl},
		{"coredns", []string{"-version"}, "CoreDNS-" + trimVersion(v.CoreDNS)},
		{"flanneld", []string{"--version"}, v.Flannel},
		{"ignition", []string{"-version"}, "Ignition " + v.Ignition},
	} {
		out, err := exec.Command(res.Bin(c.bin), c.args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s %v: want %q in output, got %v:\n%s", c.bin, c.args, c.want, err, out)
		}
	}
	out, err := exec.Command(filepath.Join(res.Dir, CNIDir, "bridge"), "--version").CombinedOutput()
	if !strings.Contains(string(out), v.CNIPlugins) {
		t.Errorf("cni bridge --version: %v\n%s", err, out)
	}

	// A second build with the same inputs is a cache hit.
	start := time.Now()
	again, err := Build(context.Background(), Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	if again.Dir != res.Dir {
		t.Errorf("second build gave %s, first %s", again.Dir, res.Dir)
	}
	t.Logf("warm build: %s", time.Since(start))
	if l, err := Lookup(context.Background(), Options{}); err != nil || l.Dir != res.Dir {
		t.Errorf("Lookup: %v %v", l.Dir, err)
	}
}

// TestImagesImportIntoContainerd runs the containerd that was built, on its
// own socket and root in a temp dir, imports the image tarballs with ctr
// and runs the busybox image with the built runc and shim.
func TestImagesImportIntoContainerd(t *testing.T) {
	res := buildDefault(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("containerd needs root")
		}
		t.Skip("containerd needs root")
	}
	dir, err := os.MkdirTemp("", "kl-ctrd-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(res.Dir, BinDir) + ":" + os.Getenv("PATH")
	var logs bytes.Buffer
	cmd := exec.Command(res.Bin("containerd"), "--config", filepath.Join(dir, "config.toml"))
	cmd.Env = append(os.Environ(), "PATH="+path)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// Overlay mounts of the container's snapshots go with the test.
		exec.Command("sh", "-c", "grep -o '"+dir+"[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l").Run()
		if t.Failed() {
			t.Logf("containerd log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not listen on %s", sock)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctr := func(args ...string) string {
		t.Helper()
		c := exec.Command(res.Bin("ctr"), append([]string{"--address", sock, "-n", "k8s.io"}, args...)...)
		c.Env = append(os.Environ(), "PATH="+path)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if v := ctr("version"); !strings.Contains(v, versions.Default().Containerd) {
		t.Errorf("ctr version: %s", v)
	}
	for _, im := range res.Manifest.Images {
		ctr("images", "import", filepath.Join(res.Dir, im.File))
	}
	list := ctr("images", "ls", "-q")
	for _, im := range res.Manifest.Images {
		if !strings.Contains(list, im.Ref+"\n") {
			t.Errorf("%s not in containerd after import:\n%s", im.Ref, list)
		}
	}
	// Run the test image: proves layers unpack and runc/shim work with it.
	out := ctr("run", "--rm", versions.TestImage, "kubelab-smoke", "sh", "-c", "echo hello from $(busybox | head -1 | cut -d' ' -f1)")
	if !strings.Contains(out, "hello from BusyBox") {
		t.Errorf("busybox container said %q", out)
	}
}

// TestCoreDNSServes runs the built CoreDNS on loopback with the plugins a
// cluster Corefile uses and resolves a name through it.
func TestCoreDNSServes(t *testing.T) {
	res := buildDefault(t)
	dir := t.TempDir()
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	corefile := fmt.Sprintf(".:%s {\n  bind 127.0.0.1\n  errors\n  hosts {\n    10.1.2.3 web.kubelab.test\n    fallthrough\n  }\n  cache 30\n  loadbalance\n}\n", port)
	os.WriteFile(filepath.Join(dir, "Corefile"), []byte(corefile), 0o644)
	var logs bytes.Buffer
	cmd := exec.Command(res.Bin("coredns"), "-conf", filepath.Join(dir, "Corefile"))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
	var ips []string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ips, err = r.LookupHost(ctx, "web.kubelab.test")
		cancel()
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || len(ips) != 1 || ips[0] != "10.1.2.3" {
		t.Fatalf("lookup through coredns: %v %v\n%s", ips, err, logs.String())
	}
}
