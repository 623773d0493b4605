package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubelab/kubelab/internal/components"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// The test environment runs the real etcd and kube-apiserver (and, when
// asked, controller-manager and scheduler) on 127.0.0.1, started with the
// flags internal/nodeconfig renders into the node's systemd units and the
// files it puts on the node. Only addresses, ports and the file-system root
// are rewritten, so wrong rendered flags make the test fail.

// binDirEnv names a directory holding etcd and kube-apiserver, for running
// these tests against binaries from elsewhere (a local Kubernetes build).
const binDirEnv = "KUBELAB_TEST_BIN_DIR"

// testBinaries finds the component binaries: $KUBELAB_TEST_BIN_DIR, else
// the kubelab component cache of the default versions. Missing binaries
// skip the test, except under CI=true where the pipeline builds them first.
func testBinaries(t testing.TB) func(name string) string {
	t.Helper()
	if dir := os.Getenv(binDirEnv); dir != "" {
		return func(name string) string { return filepath.Join(dir, name) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := components.Lookup(ctx, components.Options{})
	if err != nil {
		msg := fmt.Sprintf("component binaries (etcd, kube-apiserver) not available: %v; run `kubelab components build` first or set %s", err, binDirEnv)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return res.Bin
}

// testEnv is a running control plane.
type testEnv struct {
	t         testing.TB
	Plan      *plan.Plan
	Cluster   plan.Cluster
	Node      plan.Node
	Creds     *pki.Cluster
	Server    string // https://127.0.0.1:<port>
	Root      string // where the node's files are placed
	procs     []*proc
	StartedAt time.Time
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// testPlan is a one-node lab: the node is etcd member, control plane and
// worker.
func testPlan(t testing.TB) *plan.Plan {
	t.Helper()
	yaml := fmt.Sprintf(`apiVersion: %s
kind: Lab
name: vtest
clusters:
  - name: k1
    nodes:
      - name: n1
        roles: [etcd, control-plane, worker]
`, spec.APIVersion)
	lab, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("parse spec: %v", err)
	}
	spec.ApplyDefaults(lab)
	dir := t.TempDir()
	if _, err := spec.Validate(lab, dir); err != nil {
		t.Fatalf("validate spec: %v", err)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startControlPlane starts etcd and kube-apiserver, plus the other
// control-plane components named in extra ("kube-controller-manager",
// "kube-scheduler"). It returns once the processes are started; callers
// wait for readiness with WaitAPIReady.
func startControlPlane(t testing.TB, extra ...string) *testEnv {
	t.Helper()
	return startControlPlaneOnly(t, append([]string{"etcd", "kube-apiserver"}, extra...)...)
}

// startControlPlaneOnly starts the named components of the rendered node.
func startControlPlaneOnly(t testing.TB, components ...string) *testEnv {
	t.Helper()
	bin := testBinaries(t)
	p := testPlan(t)
	c := p.Clusters[0]
	n := c.Nodes[0]
	labDir := t.TempDir()
	creds, _, err := pki.Ensure(labDir, p.Lab, c, p.Network, pki.Options{})
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	node, err := nodeconfig.Build(nodeconfig.Input{Plan: p, Cluster: c, Node: n, Creds: creds, Versions: versions.Default()})
	if err != nil {
		t.Fatalf("nodeconfig: %v", err)
	}
	env := &testEnv{t: t, Plan: p, Cluster: c, Node: n, Creds: creds, Root: t.TempDir()}
	ports := map[int]int{} // rendered port -> free port on the host
	for _, rendered := range []int{nodeconfig.EtcdClientPort, nodeconfig.EtcdPeerPort, 2381, nodeconfig.APIServerPort} {
		ports[rendered] = freePort(t)
	}
	env.Server = fmt.Sprintf("https://127.0.0.1:%d", ports[nodeconfig.APIServerPort])
	rw := rewriter{root: env.Root, addr: n.Address.String(), ports: ports}

	// The node's files, placed under Root: certificates, keys and the
	// component kubeconfigs (whose server is rewritten like the flags).
	for _, f := range node.Files {
		data := f.Contents
		if strings.HasSuffix(f.Path, ".kubeconfig") {
			data = []byte(rw.value(string(data)))
		}
		dst := filepath.Join(env.Root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, os.FileMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	units := map[string]string{}
	for _, u := range node.Units {
		if u.DropIn == "" {
			units[u.Name] = u.Contents
		}
	}
	env.StartedAt = time.Now()
	for _, name := range components {
		unit, ok := units[name+".service"]
		if !ok {
			t.Fatalf("nodeconfig rendered no %s.service for node %s", name, n.Name)
		}
		binary, flags, err := execStartOf(unit)
		if err != nil {
			t.Fatalf("%s.service: %v", name, err)
		}
		if filepath.Base(binary) != name {
			t.Fatalf("%s.service runs %s", name, binary)
		}
		args := rw.flags(flags)
		switch name {
		case "kube-controller-manager", "kube-scheduler":
			// Their default secure ports are fixed; parallel runs must not clash.
			args = append(args, fmt.Sprintf("--secure-port=%d", freePort(t)))
		}
		for _, a := range args {
			if strings.Contains(a, "="+"/etc/") || strings.Contains(a, "=/var/") {
				t.Fatalf("%s: flag %s still points outside the test root; teach the rewriter", name, a)
			}
		}
		env.start(name, bin(name), args)
	}
	return env
}

// rewriter maps what nodeconfig renders for the node onto this host.
type rewriter struct {
	root  string
	addr  string      // the node's lab address
	ports map[int]int // rendered -> host port
}

var nodePathRe = regexp.MustCompile(`(^|[=,])(/etc/kubernetes|/var/lib/etcd)`)

func (r rewriter) value(v string) string {
	v = nodePathRe.ReplaceAllString(v, "${1}"+r.root+"${2}")
	v = strings.ReplaceAll(v, "0.0.0.0", "127.0.0.1")
	v = strings.ReplaceAll(v, r.addr, "127.0.0.1")
	for from, to := range r.ports {
		v = strings.ReplaceAll(v, "127.0.0.1:"+strconv.Itoa(from), "127.0.0.1:"+strconv.Itoa(to))
	}
	return v
}

func (r rewriter) flags(flags []string) []string {
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		// The API server refuses a loopback advertise address; the node's
		// address is only written into the kubernetes endpoints, and nothing
		// in the test dials it.
		if strings.HasPrefix(f, "--advertise-address=") {
			out = append(out, f)
			continue
		}
		f = r.value(f)
		if strings.HasPrefix(f, "--secure-port=") {
			if p, err := strconv.Atoi(strings.TrimPrefix(f, "--secure-port=")); err == nil {
				f = "--secure-port=" + strconv.Itoa(r.ports[p])
			}
		}
		out = append(out, f)
	}
	return out
}

// execStartOf splits a unit's ExecStart= (with backslash continuations)
// into the binary and its arguments. nodeconfig writes one flag per line
// and never quotes, so whitespace splitting is exact.
func execStartOf(unit string) (string, []string, error) {
	joined := strings.ReplaceAll(unit, "\\\n", " ")
	for _, l := range strings.Split(joined, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "ExecStart="); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return "", nil, errors.New("empty ExecStart=")
			}
			return f[0], f[1:], nil
		}
	}
	return "", nil, errors.New("no ExecStart=")
}

func (e *testEnv) start(name, path string, args []string) {
	t := e.t
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	logPath := filepath.Join(e.Root, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary even if cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	t.Cleanup(func() { p.stop(t) })
}

func (p *proc) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Logf("%s did not stop on SIGTERM within 15s; killed", p.name)
	}
}

// checkAlive fails the test, with the log tails, when a process exited.
func (e *testEnv) checkAlive() {
	e.t.Helper()
	for _, p := range e.procs {
		select {
		case <-p.done:
			e.t.Fatalf("%s exited (%v); log tail:\n%s", p.name, p.err, e.logTail(p.name, 30))
		default:
		}
	}
}

func (e *testEnv) logTail(name string, n int) string {
	b, err := os.ReadFile(filepath.Join(e.Root, name+".log"))
	if err != nil {
		return err.Error()
	}
	return tail(string(bytes.TrimSpace(b)), n)
}

// dumpLogsOnFailure logs every component's log tail if the test failed.
func (e *testEnv) dumpLogsOnFailure() {
	e.t.Cleanup(func() {
		if !e.t.Failed() {
			return
		}
		for _, p := range e.procs {
			e.t.Logf("--- %s log tail ---\n%s", p.name, e.logTail(p.name, 40))
		}
	})
}

// config is a client config for a kubeconfig identity against the test
// API server.
func (e *testEnv) config(name string) *rest.Config {
	e.t.Helper()
	kc, err := e.Creds.KubeconfigFor(name, e.Server)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

func (e *testEnv) clientset(name string) kubernetes.Interface {
	e.t.Helper()
	cs, err := kubernetes.NewForConfig(e.config(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return cs
}

// waitReady waits for /readyz, failing early with the logs when a
// component exits (wrong flags show up here).
func (e *testEnv) waitReady(timeout time.Duration) time.Duration {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- WaitAPIReady(ctx, e.config(pki.Admin)) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			e.checkAlive()
			if err != nil {
				e.t.Fatalf("WaitAPIReady: %v", err)
			}
			return time.Since(e.StartedAt)
		case <-tick.C:
			for _, p := range e.procs {
				select {
				case <-p.done:
					cancel()
					<-errc
					e.checkAlive()
				default:
				}
			}
		}
	}
}

// stop stops every process now (cleanup would do it at the end).
func (e *testEnv) stop() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop(e.t)
	}
}
