package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

// tickerInit is a guest that counts on its console once a second. A
// restored guest must go on counting from the saved tick (its memory), not
// boot again.
const tickerInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
i=0
while :; do
	i=$((i+1))
	echo "tick $i end" >/dev/ttyS0
	/bin/busybox sleep 1
done
`

var tickRE = regexp.MustCompile(`tick (\d+) end`)

// ticks returns the tick numbers in the console after offset from.
func ticks(t *testing.T, console string, from int64) []int {
	t.Helper()
	data, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, m := range tickRE.FindAllStringSubmatch(string(data[from:]), -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// qemuWrite writes a byte pattern to the machine's node disk through
// QEMU's own monitor (the guest has no disk driver: the host changes the
// disk as QEMU sees it).
func qemuWrite(t *testing.T, ctx context.Context, m driver.Machine, pattern string) {
	t.Helper()
	q, err := dialQMP(ctx, QMPPath(m))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	cmd := "qemu-io disk0 \"write -P " + pattern + " 0 64k\""
	if _, err := q.execute("human-monitor-command", map[string]any{"command-line": cmd}); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// diskHas reports whether the first 64 KiB of a qcow2 file (which QEMU may
// hold open: -U shares it) are the byte pattern.
func diskHas(t *testing.T, path, pattern string) bool {
	t.Helper()
	out, err := exec.Command("qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P "+pattern+" 0 64k", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io read %s: %v\n%s", path, err, out)
	}
	if !strings.Contains(string(out), "read 65536/65536") {
		t.Fatalf("qemu-io read %s: %s", path, out)
	}
	return !strings.Contains(string(out), "verification failed")
}

func waitTick(t *testing.T, ctx context.Context, console string, from int64, n int) {
	t.Helper()
	if err := driver.WaitConsole(ctx, console, from, "tick "+strconv.Itoa(n)+" end", nil); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotInitramfs saves a running guest's memory and disk, lets it
// run on and its disk change, kills it, restores the saved state and checks the
// guest continues from the saved moment with the saved disk; then suspends
// and resumes it, and checks that a state cannot be loaded into a machine
// of another shape (QEMU refuses; the driver reports it, no hang).
func TestSnapshotInitramfs(t *testing.T) {
	requireVMs(t)
	drivertest.RequireTool(t, "busybox")
	work := t.TempDir()
	kernel := drivertest.TestKernel(t)
	initrd := filepath.Join(work, "initramfs.cpio")
	drivertest.BusyboxInitramfs(t, initrd, "unused") // checks busybox is static
	bb, err := os.ReadFile(drivertest.RequireTool(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	if err := drivertest.WriteInitramfs(initrd, []drivertest.CPIOEntry{
		{Name: "bin", Mode: drivertest.SIFDIR | 0o755, Data: nil},
		{Name: "dev", Mode: drivertest.SIFDIR | 0o755, Data: nil},
		{Name: "bin/busybox", Mode: drivertest.SIFREG | 0o755, Data: bb},
		{Name: "init", Mode: drivertest.SIFREG | 0o755, Data: []byte(tickerInit)},
	}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(work, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	tn := drivertest.NewNet(t, "qemu")
	m := driver.Machine{
		Lab: "kltest", Name: "snap-" + drivertest.RandHex(2), Dir: filepath.Join(work, "node"),
		CPUs: 1, MemoryMiB: 256, BaseImage: base,
		Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1 quiet",
		MAC: "52:54:00:12:34:57", Tap: tn.Tap, Netns: tn.NS,
	}
	d := New(Options{StopTimeout: 2 * time.Second})
	cleanupMachine(t, d, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	console := d.ConsolePath(m)
	defer func() {
		if t.Failed() {
			data, _ := os.ReadFile(console)
			t.Logf("console:\n%s", data)
		}
	}()

	compat, err := d.StateCompatibility(ctx)
	if err != nil || !strings.Contains(compat, "QEMU emulator version") || !strings.Contains(compat, "accel ") {
		t.Fatalf("StateCompatibility = %q, %v", compat, err)
	}
	t.Logf("state compatibility: %s", compat)

	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitTick(t, ctx, console, 0, 3)
	qemuWrite(t, ctx, m, "0xaa")

	// Save: pause, save, resume; a running machine is refused.
	snap := filepath.Join(work, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SaveState(ctx, m, snap); err == nil || !strings.Contains(err.Error(), "not paused") {
		t.Fatalf("SaveState of a running machine: %v, want a refusal", err)
	}
	if err := d.Pause(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StatePaused)
	saveStart := time.Now()
	files, err := d.SaveState(ctx, m, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %v in %.2fs", files, time.Since(saveStart).Seconds())
	for _, f := range files {
		st, err := os.Stat(filepath.Join(snap, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600 (guest memory holds secrets)", f, st.Mode().Perm())
		}
		t.Logf("  %s: %d KiB", f, st.Size()>>10)
	}
	saved := ticks(t, console, 0)
	last := saved[len(saved)-1]
	if err := d.Resume(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateRunning)
	// It runs on, and its disk changes after the save.
	waitTick(t, ctx, console, 0, last+3)
	qemuWrite(t, ctx, m, "0xbb")
	if !diskHas(t, filepath.Join(m.Dir, DiskFile), "0xbb") {
		t.Fatal("the write after the save did not land on the node disk")
	}
	if !diskHas(t, filepath.Join(snap, DiskFile), "0xaa") {
		t.Fatal("the frozen disk changed after the save")
	}

	// Restore onto the running machine: it is replaced.
	oldPID := d.PID(m)
	restoreStart := time.Now()
	if err := d.RestoreState(ctx, m, snap); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StatePaused)
	if pid := d.PID(m); pid == oldPID || countNamed(t, m.ID()) != 1 {
		t.Fatalf("after restore: pid %d (was %d), %d processes named %s; want one new process", pid, oldPID, countNamed(t, m.ID()), m.ID())
	}
	t.Logf("restored (paused) in %.2fs", time.Since(restoreStart).Seconds())
	if !diskHas(t, filepath.Join(m.Dir, DiskFile), "0xaa") {
		t.Fatal("the restored disk is not the disk at the save")
	}
	// The old process printed until it was killed; the restored one is
	// paused: what comes after this offset is the restored guest's.
	from := driver.ConsoleSize(console)
	if err := d.Resume(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitTick(t, ctx, console, from, last+2)
	// The save may have caught a tick line half printed (its number is then
	// not yet counted): the first whole tick after the restore is last+1
	// or last+2, never 1 (a new boot) nor last+3 or more (the state the
	// killed process had reached).
	after := ticks(t, console, from)
	if len(after) == 0 || after[0] < last+1 || after[0] > last+2 {
		t.Fatalf("after restore the guest printed ticks %v; want it to go on from tick %d or %d (saved memory)", after, last+1, last+2)
	}

	// Suspend and resume: the guest goes on counting, no new boot.
	if err := d.Suspend(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateSuspended)
	if d.PID(m) != 0 {
		t.Fatal("QEMU still runs after Suspend")
	}
	suspended := ticks(t, console, from)
	lastSuspended := suspended[len(suspended)-1]
	from = driver.ConsoleSize(console)
	resumeStart := time.Now()
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateRunning)
	waitTick(t, ctx, console, from, lastSuspended+2) // +1 may have been half printed before the suspend
	t.Logf("resume from suspend to the next tick: %.2fs", time.Since(resumeStart).Seconds())
	if _, err := os.Stat(filepath.Join(m.Dir, SuspendFile)); !os.IsNotExist(err) {
		t.Errorf("suspend state kept after resume: %v", err)
	}
	if data, _ := os.ReadFile(console); strings.Contains(string(data[from:]), "Linux version") {
		t.Error("the resumed machine booted a kernel again")
	}

	// A state loaded into a machine of another shape: a clear error.
	if err := d.Stop(ctx, m); err != nil {
		t.Fatal(err)
	}
	other := m
	other.MemoryMiB = 384
	errStart := time.Now()
	err = d.RestoreState(ctx, other, snap)
	if err == nil || !strings.Contains(err.Error(), "while loading the saved state") {
		t.Fatalf("restore into a machine with other memory: %v, want a load error", err)
	}
	t.Logf("mismatched restore refused in %.2fs: %v", time.Since(errStart).Seconds(), err)

	if err := d.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(m.Dir)
		t.Fatalf("Delete left %v", entries)
	}
}
