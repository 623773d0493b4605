package pki

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// findEtcd looks for etcd and etcdctl in $KUBELAB_ETCD (a directory), the
// component cache and PATH. Under CI=true a missing etcd fails the test.
func findEtcd(t *testing.T) (etcd, etcdctl string) {
	t.Helper()
	var dirs []string
	if d := os.Getenv("KUBELAB_ETCD"); d != "" {
		dirs = append(dirs, d)
	}
	cache := os.Getenv("KUBELAB_CACHE")
	if cache == "" {
		if ucd, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(ucd, "kubelab")
		}
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "components", "*", "bin", "etcd")); len(m) > 0 {
		for _, p := range m {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, d := range dirs {
		e, c := filepath.Join(d, "etcd"), filepath.Join(d, "etcdctl")
		if isExec(e) && isExec(c) {
			return e, c
		}
	}
	return requireTool(t, "etcd"), requireTool(t, "etcdctl")
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestRealEtcd starts etcd on loopback with the member's server and peer
// certificates and client-certificate authentication, then talks to it with
// etcdctl as the API server and as flannel, and as someone it must refuse.
func TestRealEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	etcd, etcdctl := findEtcd(t)
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	f := func(name, ext string) string { return filepath.Join(cl.Dir, name+ext) }
	client := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
	peer := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, etcd,
		"--name=cp1", "--data-dir="+t.TempDir(),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=cp1="+peer, "--initial-cluster-state=new",
		"--cert-file="+f(EtcdServer("cp1"), ".crt"), "--key-file="+f(EtcdServer("cp1"), ".key"),
		"--client-cert-auth", "--trusted-ca-file="+f(EtcdCA, ".crt"),
		"--peer-cert-file="+f(EtcdPeer("cp1"), ".crt"), "--peer-key-file="+f(EtcdPeer("cp1"), ".key"),
		"--peer-client-cert-auth", "--peer-trusted-ca-file="+f(EtcdCA, ".crt"),
	)
	log := &lockedLog{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("etcd log:\n%s", log.String())
		}
	}()
	ctl := func(as string, args ...string) (string, error) {
		base := []string{"--endpoints=" + client, "--dial-timeout=2s", "--command-timeout=5s",
			"--cacert=" + f(EtcdCA, ".crt"), "--cert=" + f(as, ".crt"), "--key=" + f(as, ".key")}
		out, err := exec.Command(etcdctl, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := ctl(EtcdAPIServerClient, "endpoint", "health")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy after 30s: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := ctl(EtcdAPIServerClient, "put", "/registry/x", "1"); err != nil {
		t.Fatalf("put as the API server: %v\n%s", err, out)
	}
	if out, err := ctl(EtcdFlannelClient, "get", "/registry/x", "--print-value-only"); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("get as flannel: %v\n%s", err, out)
	}
	// A Kubernetes-CA identity is not an etcd client.
	out, err := ctl(Admin, "get", "/registry/x")
	if err == nil {
		t.Fatalf("etcd accepted the Kubernetes admin certificate:\n%s", out)
	}
	// etcdctl may report the refusal as a certificate error or, when it
	// keeps retrying past its timeout, as a deadline; etcd's own log says
	// why it refused either way.
	if !strings.Contains(out, "certificate") && !strings.Contains(log.String(), "certificate signed by unknown authority") {
		t.Errorf("admin refused for another reason than its certificate: %v\n%s", err, out)
	}
}

// lockedLog collects a process's output while the test reads it.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
