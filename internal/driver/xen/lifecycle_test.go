package xen

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

// fakeXL stands in for xl where no Xen runs (the build machines): it keeps
// each "domain" as its domain file in a state directory, answers list,
// list -l, info, create, shutdown, destroy and unpause in xl 4.17's output
// formats (as recorded from the nested Xen test), appends a line to
// xenconsoled's guest log on create, and records every call. The real xl
// runs in test/xen, against Xen nested under QEMU.
const fakeXL = `#!/bin/sh
echo "$*" >>"$XLSTATE/calls"
name_of() { sed -n 's/^name = "\(.*\)"$/\1/p' "$1"; }
case "$1" in
info)
	printf 'host                   : dom0\nrelease                : 6.1.0-57-amd64\nxen_major              : 4\nxen_minor              : 17\nxen_extra              : .7\ntotal_memory           : 3583\nfree_memory            : %s\n' "${XLFREE:-4096}"
	;;
list)
	long=; [ "$2" = -l ] && { long=1; shift; }
	n=$2
	if [ ! -e "$XLSTATE/$n.cfg" ] || { [ -n "$long" ] && [ -n "$XLGONE" ]; }; then
		echo "$n is an invalid domain identifier (rc=-6)" >&2
		exit 1
	fi
	if [ -e "$XLSTATE/$n.dying" ]; then
		# A shut-down guest on its way out: no devices left, gone after
		# a few more listings.
		left=$(cat "$XLSTATE/$n.dying")
		if [ "$left" = 0 ]; then
			rm -f "$XLSTATE/$n.cfg" "$XLSTATE/$n.state" "$XLSTATE/$n.dying"
			echo "$n is an invalid domain identifier (rc=-6)" >&2
			exit 1
		fi
		echo $((left - 1)) >"$XLSTATE/$n.dying"
	fi
	if [ -n "$long" ] && [ -e "$XLSTATE/$n.dying" ]; then
		printf '[\n    {\n        "domid": 7,\n        "config": {\n            "c_info": {\n                "type": "pv",\n                "name": "%s"\n            }\n        }\n    }\n]\n' "$n"
	elif [ -n "$long" ]; then
		disk=$(grep -o "target=[^']*" "$XLSTATE/$n.cfg" | head -n 1 | cut -d= -f2-)
		printf '[\n    {\n        "domid": 7,\n        "config": {\n            "c_info": {\n                "type": "pv",\n                "name": "%s"\n            },\n            "disks": [\n                {\n                    "pdev_path": "%s",\n                    "vdev": "xvda"\n                }\n            ]\n        }\n    }\n]\n' "$n" "$disk"
	else
		printf 'Name                                        ID   Mem VCPUs\tState\tTime(s)\n%-40s %5s %5s %5s     %s %9s\n' "$n" 7 2048 2 "$(cat "$XLSTATE/$n.state")" 12.3
	fi
	;;
create)
	n=$(name_of "$2")
	cp "$2" "$XLSTATE/$n.cfg"
	echo -- "-b----" >"$XLSTATE/$n.state"
	echo "booted $n" >>"$XLLOGDIR/guest-$n.log"
	;;
shutdown)
	[ "$2" = -w ] && shift
	if [ -n "$XLDYING" ]; then
		printf "%s\\n" ---s-- >"$XLSTATE/$2.state"
		echo "$XLDYING" >"$XLSTATE/$2.dying"
	else
		rm -f "$XLSTATE/$2.cfg" "$XLSTATE/$2.state"
	fi
	;;
destroy)
	rm -f "$XLSTATE/$2.cfg" "$XLSTATE/$2.state"
	;;
unpause)
	echo -- "-b----" >"$XLSTATE/$2.state"
	;;
*)
	echo "fake xl: unknown command $1" >&2
	exit 1
	;;
esac
`

type fakeXen struct {
	state, logDir string
	opts          Options
}

// newFakeXen installs the fake xl, a stand-in qdisk backend file, and a
// process named xenconsoled logging guests to a test directory (the
// driver looks for it among the running processes).
func newFakeXen(t *testing.T) fakeXen {
	t.Helper()
	drivertest.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	f := fakeXen{state: filepath.Join(dir, "state"), logDir: filepath.Join(dir, "console")}
	for _, d := range []string{f.state, f.logDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	xl := filepath.Join(dir, "xl")
	qdisk := filepath.Join(dir, "qemu-system-i386")
	for p, body := range map[string]string{xl: fakeXL, qdisk: "#!/bin/sh\n"} {
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("XLSTATE", f.state)
	t.Setenv("XLLOGDIR", f.logDir)
	// This test binary again, named xenconsoled (see TestMain).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := &exec.Cmd{Path: self, Args: []string{"xenconsoled", "--log=guest", "--log-dir=" + f.logDir},
		Env: append(os.Environ(), "KLTEST_FAKE_XENCONSOLED=1")}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	f.opts = Options{XL: xl, QDisk: qdisk, ConsoleLogDir: f.logDir, StopTimeout: 5 * time.Second}
	return f
}

func (f fakeXen) calls(t *testing.T) []string {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(f.state, "calls"))
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func (f fakeXen) count(t *testing.T, prefix string) int {
	n := 0
	for _, c := range f.calls(t) {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// runningMachine creates and starts a test machine.
func runningMachine(t *testing.T, opts Options) (*Driver, driver.Machine) {
	t.Helper()
	d, m := New(opts), testMachine(t)
	if err := d.Create(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return d, m
}

func testMachine(t *testing.T) driver.Machine {
	t.Helper()
	work := t.TempDir()
	base := filepath.Join(work, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	overlay := filepath.Join(work, "overlay.tar")
	if err := os.WriteFile(overlay, make([]byte, 1024), 0o644); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(work, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return driver.Machine{
		Lab: "xt", Name: "cp1", Dir: filepath.Join(work, "nodes", "cp1"),
		CPUs: 1, MemoryMiB: 2048, BaseImage: base, Kernel: kernel, Cmdline: "root=LABEL=r console=ttyS0",
		MAC: "00:16:3e:4e:31:10", Bridge: "kl-xt",
		Config: driver.Config{Kind: driver.ConfigOverlay, Path: overlay},
	}
}

func wantState(t *testing.T, d *Driver, m driver.Machine, want driver.State) {
	t.Helper()
	got, err := d.State(context.Background(), m)
	if err != nil || got != want {
		t.Fatalf("State = %s, %v; want %s", got, err, want)
	}
}

// TestLifecycleWithRecordedXL walks a machine through the driver with the
// fake xl: create, start, the console, pause and resume, stop, refresh
// (a fresh disk), and delete; a domain of the same name kubelab did not
// make is refused untouched.
func TestLifecycleWithRecordedXL(t *testing.T) {
	f := newFakeXen(t)
	d := New(f.opts)
	m := testMachine(t)
	ctx := context.Background()

	wantState(t, d, m, driver.StateAbsent)
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateStopped)
	cfg, err := os.ReadFile(DomainFile(m))
	if err != nil || !strings.Contains(string(cfg), `name = "xt-cp1"`) {
		t.Fatalf("domain file: %v\n%s", err, cfg)
	}
	if st, err := os.Stat(DomainFile(m)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("domain file mode: %v %v", st.Mode(), err)
	}

	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateRunning)
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, "create"); n != 1 {
		t.Errorf("%d xl create calls after two Starts, want 1", n)
	}
	console, err := os.ReadFile(d.ConsolePath(m))
	if err != nil || !strings.Contains(string(console), "booted xt-cp1") {
		t.Errorf("console.log does not show xenconsoled's log of the guest: %q %v", console, err)
	}

	// Paused (xl pause): reported, and Start unpauses.
	if err := os.WriteFile(filepath.Join(f.state, "xt-cp1.state"), []byte("--p---\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StatePaused)
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateRunning)
	if f.count(t, "unpause xt-cp1") != 1 {
		t.Errorf("no xl unpause: %q", f.calls(t))
	}

	if err := d.Reprovision(ctx, m); err == nil {
		t.Error("Reprovision of a running machine succeeded")
	}
	if err := d.Stop(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateStopped)
	if f.count(t, "shutdown -w xt-cp1") != 1 || f.count(t, "destroy") != 0 {
		t.Errorf("Stop did not shut the guest down cleanly: %q", f.calls(t))
	}
	if err := d.Reprovision(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateStopped)

	// Start again: xenconsoled appends to the same log.
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	console, _ = os.ReadFile(d.ConsolePath(m))
	if strings.Count(string(console), "booted") != 2 {
		t.Errorf("console after two boots: %q", console)
	}

	// The same name for another directory: someone else's domain.
	other := m
	other.Dir = filepath.Join(filepath.Dir(m.Dir), "elsewhere")
	for name, err := range map[string]error{
		"Create": d.Create(ctx, other), "Start": d.Start(ctx, other), "Stop": d.Stop(ctx, other), "Delete": d.Delete(ctx, other),
	} {
		if err == nil || !strings.Contains(err.Error(), "kubelab did not make") {
			t.Errorf("%s on a domain kubelab did not make: %v", name, err)
		}
	}
	wantState(t, d, m, driver.StateRunning)

	if err := d.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	wantState(t, d, m, driver.StateAbsent)
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(m.Dir)
		t.Errorf("Delete left %s: %v", m.Dir, entries)
	}
	if _, err := os.Stat(filepath.Join(f.logDir, "guest-xt-cp1.log")); !os.IsNotExist(err) {
		t.Errorf("Delete left xenconsoled's log of the guest: %v", err)
	}
	if err := d.Delete(ctx, m); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// TestRefusals: what the host cannot serve is refused before anything is
// made, with the fix in the error.
func TestRefusals(t *testing.T) {
	f := newFakeXen(t)
	ctx := context.Background()

	t.Run("qcow2 without the qdisk backend", func(t *testing.T) {
		opts := f.opts
		opts.QDisk = "/nonexistent/qemu-system-i386"
		m := testMachine(t)
		err := New(opts).Create(ctx, m)
		if err == nil || !strings.Contains(err.Error(), "apt-get install qemu-system-xen, or set xen.disk: raw") {
			t.Fatalf("Create: %v", err)
		}
		if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
			t.Error("the node directory was made anyway")
		}
	})

	t.Run("more memory than Xen has free", func(t *testing.T) {
		t.Setenv("XLFREE", "1024")
		m := testMachine(t)
		err := New(f.opts).Preflight(ctx, []driver.Machine{m})
		if err == nil || !strings.Contains(err.Error(), "need 2048 MiB (cp1 2048 MiB) but Xen has 1024 MiB free (xl info: free_memory)") {
			t.Fatalf("Preflight: %v", err)
		}
		t.Setenv("XLFREE", "4096")
		if err := New(f.opts).Preflight(ctx, []driver.Machine{m}); err != nil {
			t.Fatalf("Preflight with room: %v", err)
		}
	})

	t.Run("xenconsoled not logging guests", func(t *testing.T) {
		opts := f.opts
		opts.ConsoleLogDir = filepath.Join(t.TempDir(), "elsewhere")
		d := New(opts)
		m := testMachine(t)
		if err := d.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, m); err == nil || !strings.Contains(err.Error(), "not "+opts.ConsoleLogDir+" where kubelab reads them") {
			t.Fatalf("Start: %v", err)
		}
	})

	// Seen in the nested Xen test: the guest that shut down was removed
	// between xl list and xl list -l.
	t.Run("domain gone between two xl calls", func(t *testing.T) {
		d, m := runningMachine(t, f.opts)
		t.Setenv("XLGONE", "1")
		wantState(t, d, m, driver.StateStopped)
		if err := d.Stop(ctx, m); err != nil {
			t.Fatalf("Stop of a domain that went away: %v", err)
		}
		t.Setenv("XLGONE", "")
		_ = d.Delete(ctx, m)
	})

	// Seen in the nested Xen test: after xl shutdown -w the domain stayed
	// listed, shut down, with no disks left in xl list -l.
	t.Run("domain leaving without its disks", func(t *testing.T) {
		d, m := runningMachine(t, f.opts)
		t.Setenv("XLDYING", "4")
		destroys := f.count(t, "destroy")
		if err := d.Stop(ctx, m); err != nil {
			t.Fatalf("Stop of a domain leaving without its disks: %v", err)
		}
		wantState(t, d, m, driver.StateStopped)
		if n := f.count(t, "destroy") - destroys; n != 0 {
			t.Errorf("%d xl destroy calls for a domain that went by itself", n)
		}
		// Start waits for a leaving domain instead of refusing it.
		if err := d.Start(ctx, m); err != nil {
			t.Fatal(err)
		}
		wantState(t, d, m, driver.StateRunning)
		t.Setenv("XLDYING", "")
		_ = d.Delete(ctx, m)
	})

	t.Run("raw disk", func(t *testing.T) {
		opts := f.opts
		opts.DiskFormat = DiskRaw
		opts.QDisk = "/nonexistent" // blkback needs no QEMU
		m := testMachine(t)
		m.DiskGiB = 1
		if err := New(opts).Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("qemu-img", "info", filepath.Join(m.Dir, RawDiskFile)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "file format: raw") || !strings.Contains(string(out), "virtual size: 1 GiB") {
			t.Errorf("raw disk: %v\n%s", err, out)
		}
	})
}

func TestParseInfo(t *testing.T) {
	info, err := ParseInfo("host                   : dom0\nxen_major              : 4\nxen_minor              : 17\nxen_extra              : .7\nfree_memory            : 2391\n")
	if err != nil || info.FreeMemoryMiB != 2391 || info.XenVersion != "4.17.7" {
		t.Errorf("ParseInfo = %+v, %v", info, err)
	}
	if _, err := ParseInfo("host : dom0\n"); err == nil {
		t.Error("no free_memory accepted")
	}
}
