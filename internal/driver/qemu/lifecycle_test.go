package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

// cleanupMachine kills the machine's QEMU, whatever the test did, by the
// pid the driver recorded.
func cleanupMachine(t testing.TB, d *Driver, m driver.Machine) {
	t.Cleanup(func() {
		if pid := d.PID(m); pid > 0 {
			_ = d.kill(context.Background(), m, pid)
		}
	})
}

func mustState(t testing.TB, d *Driver, m driver.Machine, want driver.State) {
	t.Helper()
	got, err := d.State(context.Background(), m)
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	if got != want {
		t.Fatalf("State = %s, want %s", got, want)
	}
}

// TestLifecycleInitramfs proves the driver's plumbing with a busybox
// initramfs: create, start, running, the devices and the kernel command
// line reach the guest, the console gets the marker, a second Start (also
// from a new Driver, like a second `kubelab up`) makes no second VM, stop,
// restart appends to the console, a reused pid is not taken for the VM,
// delete leaves nothing.
func TestLifecycleInitramfs(t *testing.T) {
	requireVMs(t)
	tn := drivertest.NewNet(t, "qemu")
	m, marker := drivertest.BusyboxMachine(t, tn, "bb-"+drivertest.RandHex(2), "52:54:00:12:34:56")
	overlay := m.Config.Path
	// The busybox guest has no ACPI handler: Stop falls back to quit.
	d := New(Options{StopTimeout: 3 * time.Second})
	cleanupMachine(t, d, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	accel, err := d.Accelerator(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accelerator: %s", accel)

	mustState(t, d, m, driver.StateAbsent)
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, m); err != nil {
		t.Fatalf("second Create: %v", err)
	}
	size, err := d.media().VirtualSize(ctx, filepath.Join(m.Dir, DiskFile))
	if err != nil || size != 1<<30 {
		t.Fatalf("disk virtual size = %d (%v), want 1 GiB", size, err)
	}
	mustState(t, d, m, driver.StateStopped)

	start := time.Now()
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateRunning)
	pid := d.PID(m)
	if pid == 0 {
		t.Fatal("no pid for a running machine")
	}
	if err := driver.WaitConsole(ctx, d.ConsolePath(m), 0, marker, func() bool { return d.PID(m) != 0 }); err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs boot to marker: %.1fs", time.Since(start).Seconds())

	console, _ := os.ReadFile(d.ConsolePath(m))
	defer func() {
		if t.Failed() {
			t.Logf("console:\n%s", console)
		}
	}()
	for _, want := range []string{
		"pci 0x1af4:0x1001", // virtio-blk (disk and config disk)
		"pci 0x1af4:0x1000", // virtio-net
		"pci 0x1af4:0x1005", // virtio-rng
		"kltest=" + strings.ToLower(marker),
	} {
		if !strings.Contains(string(console), want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if n := strings.Count(string(console), "pci 0x1af4:0x1001"); n != 2 {
		t.Errorf("%d virtio-blk devices, want 2 (disk and config disk)", n)
	}

	// QEMU runs in the test's namespace: its network namespace is the tap's.
	hostNS, _ := os.Readlink("/proc/self/ns/net")
	vmNS, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if vmNS == "" || vmNS == hostNS {
		t.Errorf("QEMU's network namespace %q is the host's %q", vmNS, hostNS)
	}
	if script, err := os.ReadFile(filepath.Join(m.Dir, ScriptFile)); err != nil || !strings.Contains(string(script), "ip netns exec "+tn.NS) {
		t.Errorf("%s does not show the command: %v\n%s", ScriptFile, err, script)
	}

	// Start again, and from a new driver value: same process.
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := New(Options{}).Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := d.PID(m); got != pid {
		t.Fatalf("Start on a running machine changed its pid %d -> %d", pid, got)
	}
	if n := countNamed(t, m.ID()); n != 1 {
		t.Errorf("%d QEMU processes named %s, want 1", n, m.ID())
	}

	// A lost pid file does not hide the VM.
	if err := os.Remove(PIDFilePath(m)); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateRunning)
	if err := d.Start(ctx, m); err != nil || d.PID(m) != pid || countNamed(t, m.ID()) != 1 {
		t.Fatalf("Start without a pid file: %v, pid %d (was %d), %d processes", err, d.PID(m), pid, countNamed(t, m.ID()))
	}

	// Paused by hand: reported, and Start resumes it.
	if _, err := qmpRun(ctx, QMPPath(m), "stop"); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StatePaused)
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateRunning)

	// Growing a running disk is deferred; Reprovision refuses.
	if err := d.Reprovision(ctx, m); err == nil {
		t.Error("Reprovision of a running machine succeeded")
	}

	if err := d.Stop(ctx, m); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateStopped)
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil && isMachineProcess(pid, m) {
		t.Fatalf("QEMU pid %d still runs after Stop", pid)
	}
	if err := d.Stop(ctx, m); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// A pid file naming some other live process is not the VM.
	if err := os.WriteFile(PIDFilePath(m), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	mustState(t, d, m, driver.StateStopped)

	// Grown while stopped, and the console keeps the first boot.
	m.DiskGiB = 2
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if size, _ := d.media().VirtualSize(ctx, filepath.Join(m.Dir, DiskFile)); size != 2<<30 {
		t.Errorf("disk not grown to 2 GiB: %d", size)
	}
	from := driver.ConsoleSize(d.ConsolePath(m))
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := driver.WaitConsole(ctx, d.ConsolePath(m), from, marker, func() bool { return d.PID(m) != 0 }); err != nil {
		t.Fatal(err)
	}
	console, _ = os.ReadFile(d.ConsolePath(m))
	if n := strings.Count(string(console), marker); n != 2 {
		t.Errorf("console has the marker %d times after two boots, want 2", n)
	}
	if pid2 := d.PID(m); pid2 == 0 {
		t.Error("no pid after restart")
	} else if rss, err := drivertest.RSSKiB(pid2); err == nil {
		t.Logf("QEMU RSS, busybox guest (%s): %d MiB", accel, rss>>10)
	}

	if err := d.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(m.Dir)
		t.Fatalf("Delete left %s: %v", m.Dir, entries)
	}
	mustState(t, d, m, driver.StateAbsent)
	if err := d.Delete(ctx, m); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	// The config disk is the renderer's: Delete must not touch it.
	if _, err := os.Stat(overlay); err != nil {
		t.Errorf("Delete removed the overlay it did not make: %v", err)
	}
}

// countNamed counts the processes whose command line has "-name id".
func countNamed(t *testing.T, id string) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		data, _ := os.ReadFile(p)
		if strings.Contains(string(data), "\x00-name\x00"+id+"\x00") {
			n++
		}
	}
	return n
}
