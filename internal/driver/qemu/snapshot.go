package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/fsutil"
)

// Files of a saved state. In a snapshot directory both are present; the
// suspend state lives in the machine's own Dir beside its disk.
const (
	StateFile   = "memory.state"
	SuspendFile = "suspend.state"
)

var (
	_ driver.Snapshotter = (*Driver)(nil)
	_ driver.Suspender   = (*Driver)(nil)
)

// Pause implements driver.Snapshotter.
func (d *Driver) Pause(ctx context.Context, m driver.Machine) error {
	if _, alive := d.process(m); !alive {
		return fmt.Errorf("machine %s: pause: it does not run", m.ID())
	}
	if _, err := qmpRun(ctx, QMPPath(m), "stop"); err != nil {
		return fmt.Errorf("machine %s: pause: %w", m.ID(), err)
	}
	return nil
}

// Resume implements driver.Snapshotter. A machine whose state was just
// saved is in QEMU's "postmigrate" state; cont takes its disks back and
// runs it.
func (d *Driver) Resume(ctx context.Context, m driver.Machine) error {
	if _, alive := d.process(m); !alive {
		return fmt.Errorf("machine %s: resume: it does not run", m.ID())
	}
	if _, err := qmpRun(ctx, QMPPath(m), "cont"); err != nil {
		return fmt.Errorf("machine %s: resume: %w", m.ID(), err)
	}
	return nil
}

// SaveState implements driver.Snapshotter: QEMU's migration stream of the
// paused machine into dir/memory.state, then a copy of its disk layer (the
// overlay on the base image) into dir/disk.qcow2. After a completed
// migration QEMU has flushed and released the disk, so the copy is the
// disk exactly as the saved memory knows it.
func (d *Driver) SaveState(ctx context.Context, m driver.Machine, dir string) ([]string, error) {
	if err := d.migrateToFile(ctx, m, filepath.Join(dir, StateFile)); err != nil {
		return nil, err
	}
	if err := copyFile(filepath.Join(m.Dir, DiskFile), filepath.Join(dir, DiskFile)); err != nil {
		return nil, fmt.Errorf("machine %s: freeze disk: %w", m.ID(), err)
	}
	return []string{StateFile, DiskFile}, nil
}

// migrateToFile saves a paused machine's state to path (atomically: a
// partial file never has the final name).
func (d *Driver) migrateToFile(ctx context.Context, m driver.Machine, path string) error {
	q, err := dialQMP(ctx, QMPPath(m))
	if err != nil {
		return fmt.Errorf("machine %s: save state: %w", m.ID(), err)
	}
	defer q.Close()
	status, err := q.status()
	if err != nil {
		return fmt.Errorf("machine %s: save state: %w", m.ID(), err)
	}
	if status != "paused" {
		// A running guest would keep changing memory and disk while they
		// are saved: the lifecycle pauses every node first.
		return fmt.Errorf("machine %s: save state: the machine is %q, not paused", m.ID(), status)
	}
	// The default bandwidth cap is meant for live migration over a
	// network; a paused guest into a local file should go at disk speed.
	if _, err := q.execute("migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		return fmt.Errorf("machine %s: save state: %w", m.ID(), err)
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	// QEMU runs the exec: URI with /bin/sh; the umask keeps the memory
	// image (private keys live in it) readable by root only.
	uri := "exec:umask 077 && cat > " + shellQuote(tmp)
	if _, err := q.execute("migrate", map[string]any{"uri": uri}); err != nil {
		return fmt.Errorf("machine %s: save state: %w", m.ID(), err)
	}
	if err := waitMigration(ctx, q, "completed"); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("machine %s: save state to %s: %w", m.ID(), path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("machine %s: save state: %w", m.ID(), err)
	}
	return nil
}

// waitMigration polls query-migrate until the migration reaches want, and
// reports QEMU's own error when it fails.
func waitMigration(ctx context.Context, q *qmpConn, want string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		raw, err := q.execute("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case want:
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", st.Status, ctx.Err())
		case <-t.C:
		}
	}
}

// RestoreState implements driver.Snapshotter: a running QEMU is killed, the
// node disk becomes a copy of the frozen layer, and QEMU starts with the same devices, loading the
// memory image instead of booting. The guest stays paused until Resume.
func (d *Driver) RestoreState(ctx context.Context, m driver.Machine, dir string) error {
	if err := d.check(m); err != nil {
		return err
	}
	state := filepath.Join(dir, StateFile)
	for _, f := range []string{state, filepath.Join(dir, DiskFile)} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("machine %s: restore: %w", m.ID(), err)
		}
	}
	// What runs now is being replaced: no graceful shutdown.
	if pid, alive := d.process(m); alive {
		if err := d.kill(ctx, m, pid); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	// The saved memory belongs to the saved disk: a suspend state of the
	// disk being replaced must never be resumed onto it.
	_ = os.Remove(filepath.Join(m.Dir, SuspendFile))
	_ = os.Remove(filepath.Join(m.Dir, TemplatePendingFile))
	if err := copyFile(filepath.Join(dir, DiskFile), filepath.Join(m.Dir, DiskFile)); err != nil {
		return fmt.Errorf("machine %s: restore disk: %w", m.ID(), err)
	}
	if err := d.prepareConfig(m); err != nil {
		return err
	}
	return d.startFromState(ctx, m, state)
}

// startFromState starts QEMU loading a saved state and waits until it is
// loaded; the guest is then paused (it was paused when saved).
// launched, if given, runs once QEMU runs (before the state is loaded).
func (d *Driver) startFromState(ctx context.Context, m driver.Machine, state string, launched ...func() error) error {
	loadFailed := func() error {
		return fmt.Errorf("machine %s: QEMU exited while loading the saved state %s: it was saved by another QEMU version or machine configuration, or is damaged", m.ID(), state)
	}
	if err := d.launch(ctx, m, "-incoming", "exec:cat "+shellQuote(state)); err != nil {
		if errors.Is(err, errExitedAtStart) {
			return fmt.Errorf("%w (%v)", loadFailed(), err)
		}
		return err
	}
	for _, f := range launched {
		if err := f(); err != nil {
			return err
		}
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if _, alive := d.process(m); !alive {
			return loadFailed()
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		q, err := dialQMP(qctx, QMPPath(m))
		if err == nil {
			status, serr := q.status()
			q.Close()
			if serr == nil && status != "inmigrate" {
				cancel()
				if status == "paused" || status == "running" {
					return nil
				}
				return fmt.Errorf("machine %s: after loading %s QEMU is %q", m.ID(), state, status)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return fmt.Errorf("machine %s: load saved state %s: %w", m.ID(), state, ctx.Err())
		case <-t.C:
		}
	}
}

// StateCompatibility implements driver.Snapshotter: QEMU's version and
// the accelerator (with KVM, also the host CPU, as the guest sees -cpu host).
func (d *Driver) StateCompatibility(ctx context.Context) (string, error) {
	accel, err := d.Accelerator(ctx)
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, d.opts.QEMU, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("qemu: %s --version: %w", d.opts.QEMU, err)
	}
	version, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	// "layout 2": the device set since vmgenid joined it.
	s := version + "; accel " + accel + "; machine pc, layout 2"
	if accel == AccelKVM {
		s += "; cpu " + hostCPUModel()
	}
	return s, nil
}

func hostCPUModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Suspend implements driver.Suspender: pause, save the state beside the
// disk, and end QEMU. The next Start loads it and runs the guest on.
func (d *Driver) Suspend(ctx context.Context, m driver.Machine) error {
	pid, alive := d.process(m)
	if !alive {
		return nil // stopped or suspended already
	}
	if err := d.Pause(ctx, m); err != nil {
		return err
	}
	if err := d.migrateToFile(ctx, m, filepath.Join(m.Dir, SuspendFile)); err != nil {
		// Leave the machine as it was rather than half-suspended.
		_ = d.Resume(context.Background(), m)
		return fmt.Errorf("suspend: %w", err)
	}
	return d.kill(ctx, m, pid)
}

// resumeSuspended starts a suspended machine from its saved state, runs
// it, and drops the state (the disk moves on from here).
func (d *Driver) resumeSuspended(ctx context.Context, m driver.Machine) error {
	state := filepath.Join(m.Dir, SuspendFile)
	if err := d.startFromState(ctx, m, state); err != nil {
		return err
	}
	if err := d.Resume(ctx, m); err != nil {
		return err
	}
	if err := os.Remove(state); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

// copyFile copies a disk layer or memory image, 0600: they hold the
// node's secrets.
func copyFile(src, dst string) error { return fsutil.CopyFile(src, dst, 0o600, 0o700) }
