package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// recordingDriver stands in for a hypervisor in the snapshot phases' unit
// tests: it records the order of calls and writes small state files. The
// real QEMU path is tested in driver/qemu (TestSnapshotInitramfs) and end
// to end in test/e2e.
type recordingDriver struct {
	mu      sync.Mutex
	calls   []string
	state   driver.State
	compat  string
	failFor string // SaveState fails for this machine
}

func (d *recordingDriver) record(s string) {
	d.mu.Lock()
	d.calls = append(d.calls, s)
	d.mu.Unlock()
}

func (d *recordingDriver) Name() string                                 { return "qemu" }
func (d *recordingDriver) Create(context.Context, driver.Machine) error { return nil }
func (d *recordingDriver) Start(context.Context, driver.Machine) error  { return nil }
func (d *recordingDriver) Stop(context.Context, driver.Machine) error   { return nil }
func (d *recordingDriver) Delete(context.Context, driver.Machine) error { return nil }
func (d *recordingDriver) ConsolePath(m driver.Machine) string {
	return filepath.Join(m.Dir, "console.log")
}
func (d *recordingDriver) StateCompatibility(context.Context) (string, error) { return d.compat, nil }
func (d *recordingDriver) State(context.Context, driver.Machine) (driver.State, error) {
	return d.state, nil
}
func (d *recordingDriver) Pause(_ context.Context, m driver.Machine) error {
	d.record("pause " + m.Name)
	return nil
}
func (d *recordingDriver) Resume(_ context.Context, m driver.Machine) error {
	d.record("resume " + m.Name)
	return nil
}
func (d *recordingDriver) SaveState(_ context.Context, m driver.Machine, dir string) ([]string, error) {
	d.record("save " + m.Name)
	if m.Name == d.failFor {
		return nil, errors.New("disk full")
	}
	return []string{"memory.state"}, os.WriteFile(filepath.Join(dir, "memory.state"), []byte("state of "+m.Name), 0o600)
}
func (d *recordingDriver) RestoreState(_ context.Context, m driver.Machine, dir string) error {
	d.record("restore " + m.Name)
	return nil
}

func (d *recordingDriver) indexOf(prefix string, last bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	idx := -1
	for i, c := range d.calls {
		if strings.HasPrefix(c, prefix) {
			if !last {
				return i
			}
			idx = i
		}
	}
	return idx
}

func (d *recordingDriver) count(prefix string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func snapshotEnv(t *testing.T) (*Env, *recordingDriver) {
	t.Helper()
	dir := t.TempDir()
	renderLab(t, dir, template(t, "default"), false)
	l, _, err := spec.Load(Layout{Dir: dir}.Spec())
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(l, dir)
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingDriver{state: driver.StateRunning, compat: "QEMU 7.2; accel tcg"}
	return &Env{Layout: Layout{Dir: dir}, Lab: l, Plan: p, Versions: versions.Default(), Driver: d, Out: io.Discard}, d
}

// runNamed runs the named phases of a list in order (the clock phase
// needs ssh to real nodes and is left to the end-to-end test).
func runNamed(t *testing.T, phases []Phase, names ...string) error {
	t.Helper()
	for _, want := range names {
		found := false
		for _, p := range phases {
			if p.Name == want {
				found = true
				if err := p.Run(context.Background()); err != nil {
					return fmt.Errorf("%s: %w", want, err)
				}
			}
		}
		if !found {
			t.Fatalf("no phase %q", want)
		}
	}
	return nil
}

func TestSnapshotSavePausesEveryNodeFirst(t *testing.T) {
	env, d := snapshotEnv(t)
	c := env.Plan.Clusters[0]
	phases, err := env.SnapshotSavePhases(c, "before-upgrade")
	if err != nil {
		t.Fatal(err)
	}
	if err := runNamed(t, phases, "check", "save", "manifest"); err != nil {
		t.Fatal(err)
	}
	n := len(c.Nodes)
	if d.count("pause ") != n || d.count("save ") != n || d.count("resume ") != n {
		t.Fatalf("calls %v: want %d pauses, saves and resumes", d.calls, n)
	}
	if lastPause, firstSave := d.indexOf("pause ", true), d.indexOf("save ", false); lastPause > firstSave {
		t.Fatalf("a node was saved before every node was paused: %v", d.calls)
	}
	if lastSave, firstResume := d.indexOf("save ", true), d.indexOf("resume ", false); lastSave > firstResume {
		t.Fatalf("a node resumed before every node was saved: %v", d.calls)
	}
	m, err := env.ReadSnapshot(c, "before-upgrade")
	if err != nil {
		t.Fatal(err)
	}
	if m.Cluster != c.Name || m.Lab != env.Lab.Name || m.Identity == "" || m.Compatibility != d.compat || len(m.Nodes) != n {
		t.Fatalf("manifest: %+v", m)
	}
	list, err := env.Snapshots()
	if err != nil || len(list) != 1 || list[0].Name != "before-upgrade" || list[0].Bytes <= 0 || list[0].Nodes != n {
		t.Fatalf("Snapshots() = %+v, %v", list, err)
	}

	// The same name again is refused before anything is paused.
	d.calls = nil
	phases, _ = env.SnapshotSavePhases(c, "before-upgrade")
	if err := runNamed(t, phases, "check"); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("saving over an existing snapshot: %v", err)
	}
	if len(d.calls) != 0 {
		t.Fatalf("a refused save touched the nodes: %v", d.calls)
	}

	// A stopped node: refused.
	d.state = driver.StateStopped
	phases, _ = env.SnapshotSavePhases(c, "other")
	if err := runNamed(t, phases, "check"); err == nil || !strings.Contains(err.Error(), "running cluster") {
		t.Fatalf("saving a stopped cluster: %v", err)
	}
}

func TestSnapshotSaveFailureResumesAndLeavesNothing(t *testing.T) {
	env, d := snapshotEnv(t)
	c := env.Plan.Clusters[0]
	d.failFor = c.Nodes[1].Name
	phases, err := env.SnapshotSavePhases(c, "broken")
	if err != nil {
		t.Fatal(err)
	}
	if err := runNamed(t, phases, "check", "save"); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("save with a failing node: %v", err)
	}
	if d.count("resume ") != len(c.Nodes) {
		t.Fatalf("not every node resumed after a failed save: %v", d.calls)
	}
	entries, _ := os.ReadDir(env.Layout.Snapshots(c.Name))
	if len(entries) != 0 {
		t.Fatalf("a failed save left %v", entries)
	}
}

func TestSnapshotNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"before-upgrade", true}, {"v1.2_3", true},
		{"", false}, {"-a", false}, {"a-", false}, {"A", false}, {"a/b", false},
		{"..", false}, {"a..b", false}, {".hidden", false}, {strings.Repeat("a", 64), false},
	} {
		if err := ValidSnapshotName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidSnapshotName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestSnapshotRestoreRefusals: a snapshot is only restored into the
// cluster it was taken of, by the same hypervisor, onto nodes of the same
// shape; refusals touch no node.
func TestSnapshotRestoreRefusals(t *testing.T) {
	env, d := snapshotEnv(t)
	c := env.Plan.Clusters[0]
	phases, _ := env.SnapshotSavePhases(c, "s1")
	if err := runNamed(t, phases, "check", "save", "manifest"); err != nil {
		t.Fatal(err)
	}
	restore := func() error {
		d.calls = nil
		phases, err := env.SnapshotRestorePhases(context.Background(), c, "s1")
		if err != nil {
			return err
		}
		err = runNamed(t, phases, "check")
		if err != nil && len(d.calls) != 0 {
			t.Errorf("a refused restore touched the nodes: %v", d.calls)
		}
		return err
	}
	if err := restore(); err != nil {
		t.Fatalf("restoring a matching snapshot: %v", err)
	}

	// Another QEMU or accelerator.
	d.compat = "QEMU 9.0; accel kvm"
	if err := restore(); err == nil || !strings.Contains(err.Error(), "cannot be loaded under") {
		t.Errorf("restore under another hypervisor: %v", err)
	}
	d.compat = "QEMU 7.2; accel tcg"

	// A node of another shape.
	env.Plan.Clusters[0].Nodes[0].MemoryMiB *= 2
	c2 := env.Plan.Clusters[0]
	phases, _ = env.SnapshotRestorePhases(context.Background(), c2, "s1")
	if err := runNamed(t, phases, "check"); err == nil || !strings.Contains(err.Error(), "changed since snapshot") {
		t.Errorf("restore onto a node with other memory: %v", err)
	}
	env.Plan.Clusters[0].Nodes[0].MemoryMiB /= 2

	// Another cluster identity (the PKI made again after a purge).
	ca := filepath.Join(env.Layout.Cluster(c.Name), "pki", "ca.crt")
	orig, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, append(orig, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err == nil || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("restore into another identity: %v", err)
	}
	if err := os.WriteFile(ca, orig, 0o644); err != nil {
		t.Fatal(err)
	}

	// A snapshot of another lab copied in.
	mf := filepath.Join(env.Layout.Snapshot(c.Name, "s1"), SnapshotManifestFile)
	data, _ := os.ReadFile(mf)
	if err := os.WriteFile(mf, []byte(strings.Replace(string(data), `"lab": "`+env.Lab.Name+`"`, `"lab": "elsewhere"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err == nil || !strings.Contains(err.Error(), "of lab elsewhere") {
		t.Errorf("restore of another lab's snapshot: %v", err)
	}
	if err := os.WriteFile(mf, data, 0o600); err != nil {
		t.Fatal(err)
	}

	// A name that does not exist.
	if _, err := env.ReadSnapshot(c, "nope"); err == nil || !strings.Contains(err.Error(), `no snapshot "nope"`) {
		t.Errorf("reading a missing snapshot: %v", err)
	}

	// destroy removes the snapshots: restoring afterwards is refused.
	if err := env.removeFiles([]plan.Cluster{c}, false); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err == nil || !strings.Contains(err.Error(), "no snapshot") {
		t.Errorf("restore after destroy: %v", err)
	}
	if err := env.DeleteSnapshot(c, "s1"); err == nil {
		t.Error("deleting a snapshot that destroy removed succeeded")
	}
}

func TestSplitByRole(t *testing.T) {
	cls := []plan.Cluster{
		{Name: "a", Nodes: []plan.Node{{Name: "cp", Roles: []string{"control-plane"}}, {Name: "w", Roles: []string{"worker"}}, {Name: "e", Roles: []string{"etcd"}}}},
		{Name: "b", Nodes: []plan.Node{{Name: "w2", Roles: []string{"worker"}}}},
		{Name: "c", Nodes: []plan.Node{{Name: "all", Roles: []string{"control-plane", "etcd", "worker"}}}},
	}
	first, rest := splitByRole(cls)
	names := func(cs []plan.Cluster) string {
		var out []string
		for _, c := range cs {
			for _, n := range c.Nodes {
				out = append(out, c.Name+"/"+n.Name)
			}
		}
		return strings.Join(out, ",")
	}
	if got := names(first); got != "a/cp,a/e,c/all" {
		t.Errorf("first = %s", got)
	}
	if got := names(rest); got != "a/w,b/w2" {
		t.Errorf("rest = %s", got)
	}
}

// TestStaggerOnlyForBoots: resuming or running workers do not wait for the
// control plane; workers that boot a kernel do.
func TestStaggerOnlyForBoots(t *testing.T) {
	env, d := snapshotEnv(t)
	_, rest := splitByRole(env.Plan.Clusters)
	for _, tc := range []struct {
		state driver.State
		want  bool
	}{
		{driver.StateSuspended, false}, {driver.StateRunning, false},
		{driver.StateStopped, true}, {driver.StateAbsent, true}, {driver.StatePaused, true},
	} {
		d.state = tc.state
		if got := env.anyNeedsBoot(context.Background(), rest); got != tc.want {
			t.Errorf("workers %s: anyNeedsBoot = %v, want %v", tc.state, got, tc.want)
		}
	}
}
