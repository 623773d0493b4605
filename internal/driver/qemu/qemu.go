// Package qemu is the driver that runs machines as plain QEMU processes,
// without a daemon: a qcow2 overlay per node, direct kernel boot, virtio
// disk, network and rng, the serial console appended to a file, a pid file
// and a QMP socket in the node directory. The QEMU process runs in the
// tap's network namespace and daemonizes, so it outlives `kubelab up`; a
// later run finds it again through the pid file, checked against the
// process's command line so a reused PID is not mistaken for the VM.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/media"
	"github.com/kubelab/kubelab/internal/versions"
)

// Files the driver makes in a machine's Dir. Delete removes exactly these.
const (
	DiskFile    = media.DiskFile
	ConsoleFile = "console.log"
	PIDFile     = "qemu.pid"
	QMPFile     = "qmp.sock"
	ScriptFile  = "qemu.sh" // the command line, for people to read (and run)
	CIDataFile  = media.CIDataFile
	// StartLogFile holds what QEMU printed while starting.
	StartLogFile = "qemu-start.log"
)

var driverFiles = []string{DiskFile, ConsoleFile, PIDFile, QMPFile, ScriptFile, CIDataFile, SuspendFile, SuspendFile + ".tmp", StartLogFile,
	TemplateConfigFile, TemplateConfigFile + ".tmp", TemplatePendingFile}

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Options tune the driver; the zero value is usable.
type Options struct {
	// QEMU and QEMUImg are the binaries (default qemu-system-x86_64 and
	// qemu-img, looked up in PATH).
	QEMU, QEMUImg string
	// Accel forces "kvm" or "tcg"; empty uses KVM when a Linux kernel
	// boots under it here (probed once per kernel).
	Accel string
	// ProbeKernel is the kernel that probe boots when no machine's kernel
	// is at hand (the lab's image; it may not exist yet).
	ProbeKernel string
	// StopTimeout is how long Stop waits for the guest to power off after
	// the ACPI power button before it quits QEMU (default 3 minutes: a
	// Kubernetes node under TCG can take a while).
	StopTimeout time.Duration
}

// Driver runs machines as QEMU processes. Use New; a Driver is safe for
// concurrent use on different machines.
type Driver struct {
	opts Options

	accel *KVMProbe
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.Reprovisioner = (*Driver)(nil)
	_ driver.Accelerated   = (*Driver)(nil)
	_ driver.Describer     = (*Driver)(nil)
)

// New returns a QEMU driver.
func New(opts Options) *Driver {
	if opts.QEMU == "" {
		opts.QEMU = "qemu-system-x86_64"
	}
	if opts.QEMUImg == "" {
		opts.QEMUImg = "qemu-img"
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 3 * time.Minute
	}
	return &Driver{opts: opts, accel: &KVMProbe{Kernel: opts.ProbeKernel}}
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "qemu" }

// ConsolePath implements driver.Driver.
func (d *Driver) ConsolePath(m driver.Machine) string { return filepath.Join(m.Dir, ConsoleFile) }

// PIDFilePath and QMPPath name the machine's pid file and QMP socket.
func PIDFilePath(m driver.Machine) string { return filepath.Join(m.Dir, PIDFile) }
func QMPPath(m driver.Machine) string     { return filepath.Join(m.Dir, QMPFile) }

// maxSocketPath is the room for a unix socket path (sun_path is 108 bytes
// including the terminating NUL).
const maxSocketPath = 107

func (d *Driver) check(m driver.Machine) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if strings.Contains(m.Dir, ",") {
		// QEMU's option syntax for the pid file, socket and console paths.
		return fmt.Errorf("machine %s: dir %q: QEMU cannot take a comma in it", m.ID(), m.Dir)
	}
	if p := QMPPath(m); len(p) > maxSocketPath {
		return fmt.Errorf("machine %s: QMP socket path %s is %d bytes, longer than a unix socket allows (%d): use a shorter lab directory", m.ID(), p, len(p), maxSocketPath)
	}
	return nil
}

// Create implements driver.Driver: the node disk as a qcow2 overlay on the
// base image (reused when present, grown when DiskGiB asks for more) and
// the configuration medium.
func (d *Driver) Create(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	if _, err := os.Stat(m.BaseImage); err != nil {
		return fmt.Errorf("machine %s: base image: %w", m.ID(), err)
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	disk := filepath.Join(m.Dir, DiskFile)
	if _, err := os.Stat(disk); errors.Is(err, fs.ErrNotExist) {
		if m.Template != "" {
			if err := d.createDiskFromTemplate(ctx, m); err != nil {
				return err
			}
		} else if err := d.createDisk(ctx, m); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	} else if err := d.growDisk(ctx, m); err != nil {
		return err
	}
	return d.prepareConfig(m)
}

// createDisk makes the node disk, an overlay on the base image.
func (d *Driver) createDisk(ctx context.Context, m driver.Machine) error {
	if err := d.media().CreateOverlay(ctx, m.BaseImage, filepath.Join(m.Dir, DiskFile), m.DiskGiB); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

func (d *Driver) media() media.Tools { return media.Tools{QEMUImg: d.opts.QEMUImg} }

// growDisk resizes an existing overlay up to DiskGiB while the machine is
// not running (QEMU holds a write lock on a disk in use; the next Create
// after a stop catches up).
func (d *Driver) growDisk(ctx context.Context, m driver.Machine) error {
	if _, alive := d.process(m); alive {
		return nil
	}
	if err := d.media().Grow(ctx, filepath.Join(m.Dir, DiskFile), m.DiskGiB); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

// prepareConfig checks the configuration medium (building the cidata ISO
// when needed); a template's machine gets its overlay padded to the
// template's config disk size.
func (d *Driver) prepareConfig(m driver.Machine) error {
	if err := media.PrepareConfig(m); err != nil {
		return err
	}
	if m.Template != "" && m.Config.Kind == driver.ConfigOverlay {
		return padTemplateConfig(m)
	}
	return nil
}

// configMedium is the file attached for the machine's configuration.
func configMedium(m driver.Machine) string {
	if m.Template != "" && m.Config.Kind == driver.ConfigOverlay {
		return filepath.Join(m.Dir, TemplateConfigFile)
	}
	return media.ConfigFile(m)
}

// Start implements driver.Driver. A machine that runs already (its pid file
// names a live QEMU with this machine's name) is left alone, so a killed
// `kubelab up` followed by a new one never makes a second VM; a paused one
// is resumed, and a suspended one is started from its saved state.
func (d *Driver) Start(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	st, err := d.State(ctx, m)
	if err != nil {
		return err
	}
	switch st {
	case driver.StateRunning:
		return nil
	case driver.StatePaused:
		// Loaded from its template by a start that was interrupted: from
		// here on it runs from its own disk.
		if err := clearPending(m); err != nil {
			return err
		}
		if _, err := qmpRun(ctx, QMPPath(m), "cont"); err != nil {
			return fmt.Errorf("machine %s: resume: %w", m.ID(), err)
		}
		return nil
	case driver.StateSuspended:
		return d.resumeSuspended(ctx, m)
	case driver.StateAbsent:
		return fmt.Errorf("machine %s: not created (no %s in %s); create it first", m.ID(), DiskFile, m.Dir)
	}
	if fromTemplate(m) {
		return d.startFromTemplate(ctx, m)
	}
	return d.launch(ctx, m)
}

// errExitedAtStart: QEMU daemonized but was gone at once. With -incoming
// that is how a state that does not fit the machine fails, when loading
// is quick.
var errExitedAtStart = errors.New("QEMU exited right after starting")

// launch runs QEMU for a machine that does not run, with extra arguments
// (-incoming for a saved state), and returns once it has daemonized.
func (d *Driver) launch(ctx context.Context, m driver.Machine, extra ...string) error {
	if p := configMedium(m); p != "" {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("machine %s: configuration medium missing (create the machine again): %w", m.ID(), err)
		}
	}
	argv, err := d.command(ctx, m)
	if err != nil {
		return err
	}
	argv = append(argv, extra...)
	if err := writeScript(filepath.Join(m.Dir, ScriptFile), m, argv); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	// Leftovers of a crashed QEMU would confuse the checks below.
	_ = os.Remove(PIDFilePath(m))
	_ = os.Remove(QMPPath(m))
	// -daemonize: QEMU returns once the VM is set up (devices opened, pid
	// file written); errors before that come on its output. The output goes
	// to a file, not a pipe: processes QEMU starts (the exec: of an
	// incoming migration) inherit it and may hold it open for long.
	logPath := filepath.Join(m.Dir, StartLogFile)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = m.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = cmd.Run()
	logFile.Close()
	out, _ := os.ReadFile(logPath)
	if err != nil {
		return fmt.Errorf("machine %s: start QEMU (see %s): %w\n%s", m.ID(), filepath.Join(m.Dir, ScriptFile), err, strings.TrimSpace(string(out)))
	}
	if _, alive := d.process(m); !alive {
		return fmt.Errorf("machine %s: %w; see %s\n%s", m.ID(), errExitedAtStart, d.ConsolePath(m), strings.TrimSpace(string(out)))
	}
	return nil
}

// State implements driver.Driver.
func (d *Driver) State(ctx context.Context, m driver.Machine) (driver.State, error) {
	if m.Dir == "" {
		return "", errors.New("machine: no dir")
	}
	if _, alive := d.process(m); alive {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		q, err := dialQMP(qctx, QMPPath(m))
		if err != nil {
			// The process lives; a busy or not yet listening monitor
			// does not make it stopped.
			return driver.StateRunning, nil
		}
		defer q.Close()
		status, err := q.status()
		if err != nil {
			return driver.StateRunning, nil
		}
		switch status {
		case "running":
			return driver.StateRunning, nil
		case "shutdown":
			return driver.StateStopped, nil
		default:
			return driver.StatePaused, nil
		}
	}
	if _, err := os.Stat(filepath.Join(m.Dir, DiskFile)); errors.Is(err, fs.ErrNotExist) {
		return driver.StateAbsent, nil
	} else if err != nil {
		return "", fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir, SuspendFile)); err == nil {
		return driver.StateSuspended, nil
	}
	return driver.StateStopped, nil
}

// Stop implements driver.Driver: the ACPI power button through QMP, then,
// after Options.StopTimeout, QMP quit and finally SIGKILL.
func (d *Driver) Stop(ctx context.Context, m driver.Machine) error {
	pid, alive := d.process(m)
	if !alive {
		d.cleanRuntime(m)
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := qmpRun(qctx, QMPPath(m), "system_powerdown")
	cancel()
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, d.opts.StopTimeout)
		gone := waitGone(wctx, m, pid)
		cancel()
		if gone {
			d.cleanRuntime(m)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("machine %s: stop: %w", m.ID(), ctx.Err())
		}
	}
	return d.kill(ctx, m, pid)
}

// kill ends QEMU at once: QMP quit, then SIGKILL.
func (d *Driver) kill(ctx context.Context, m driver.Machine, pid int) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, _ = qmpRun(qctx, QMPPath(m), "quit")
	cancel()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	gone := waitGone(wctx, m, pid)
	cancel()
	if !gone {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("machine %s: kill QEMU pid %d: %w", m.ID(), pid, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		gone = waitGone(wctx, m, pid)
		cancel()
		if !gone {
			return fmt.Errorf("machine %s: QEMU pid %d still runs after SIGKILL", m.ID(), pid)
		}
	}
	d.cleanRuntime(m)
	return nil
}

func waitGone(ctx context.Context, m driver.Machine, pid int) bool {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if !isMachineProcess(pid, m) {
			return true
		}
		select {
		case <-ctx.Done():
			return !isMachineProcess(pid, m)
		case <-t.C:
		}
	}
}

// cleanRuntime removes what a QEMU that is gone may have left behind.
func (d *Driver) cleanRuntime(m driver.Machine) {
	_ = os.Remove(PIDFilePath(m))
	_ = os.Remove(QMPPath(m))
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, m driver.Machine) error {
	if m.Dir == "" {
		return errors.New("machine: no dir")
	}
	if pid, alive := d.process(m); alive {
		if err := d.kill(ctx, m, pid); err != nil {
			return err
		}
	}
	for _, f := range append(driverFiles, DiskFile+".tmp") {
		if err := os.Remove(filepath.Join(m.Dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("machine %s: delete: %w", m.ID(), err)
		}
	}
	// The node directory goes too if nothing else (rendered config, keys)
	// is in it.
	if err := os.Remove(m.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("machine %s: delete: %w", m.ID(), err)
	}
	return nil
}

// Reprovision implements driver.Reprovisioner: a fresh overlay on the base
// image, so the node boots as new and applies its configuration again.
func (d *Driver) Reprovision(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	if _, alive := d.process(m); alive {
		return fmt.Errorf("machine %s: reprovision: the machine runs; stop it first", m.ID())
	}
	// A suspended memory image belongs to the old disk: it goes with it.
	for _, f := range []string{SuspendFile, DiskFile} {
		if err := os.Remove(filepath.Join(m.Dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("machine %s: reprovision: %w", m.ID(), err)
		}
	}
	return d.Create(ctx, m)
}

// Describe implements driver.Describer: the shell command Start runs.
func (d *Driver) Describe(ctx context.Context, m driver.Machine) (string, error) {
	if err := d.check(m); err != nil {
		return "", err
	}
	argv, err := d.command(ctx, m)
	if err != nil {
		return "", err
	}
	return script(m, argv), nil
}

// command is the full argv Start runs: QEMU, inside the namespace if any.
func (d *Driver) command(ctx context.Context, m driver.Machine) ([]string, error) {
	accel, err := d.accel.Answer(ctx, d.opts.QEMU, d.opts.Accel, m.Kernel)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	argv := append([]string{d.opts.QEMU}, Args(m, accel)...)
	if m.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", m.Netns}, argv...)
	}
	return argv, nil
}

// Args is QEMU's argument list for m with the given accelerator ("kvm" or
// "tcg"). It only depends on its inputs.
func Args(m driver.Machine, accel string) []string {
	a := []string{"-name", m.ID(), "-no-user-config", "-nodefaults", "-display", "none"}
	cpus := m.CPUs
	if cpus < 1 {
		cpus = 1
	}
	if accel == AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host", "-smp", strconv.Itoa(cpus))
	} else {
		// Measured under TCG: tb-size=256 halves the idle RSS at no boot
		// cost. Boots are not faster with more vCPUs, but a busy worker
		// (many pod sandboxes at once) is, with multi-threaded TCG; the
		// default stays one vCPU and lab.yaml's cpus is honoured.
		a = append(a, "-accel", "tcg,tb-size=256", "-cpu", "max", "-smp", strconv.Itoa(cpus))
	}
	a = append(a, "-m", strconv.FormatUint(m.MemoryMiB, 10))
	if m.Kernel != "" {
		a = append(a, "-kernel", m.Kernel)
		if m.Initrd != "" {
			a = append(a, "-initrd", m.Initrd)
		}
		if m.Cmdline != "" {
			a = append(a, "-append", m.Cmdline)
		}
	}
	// The node disk comes first, so the guest sees it as /dev/vda.
	disk := "virtio-blk-pci,drive=disk0"
	if m.Kernel == "" {
		disk += ",bootindex=0" // the firmware boots from it
	}
	a = append(a,
		"-drive", "file="+optEscape(filepath.Join(m.Dir, DiskFile))+",if=none,id=disk0,format=qcow2,discard=unmap",
		"-device", disk)
	switch m.Config.Kind {
	case driver.ConfigOverlay:
		a = append(a,
			"-drive", "file="+optEscape(configMedium(m))+",if=none,id=config0,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=config0,serial="+versions.NodeConfigDisk)
	case driver.ConfigCloudInit:
		a = append(a,
			"-drive", "file="+optEscape(configMedium(m))+",if=none,id=cidata0,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=cidata0")
	case driver.ConfigIgnition:
		// Flatcar reads the first key, Fedora CoreOS the second.
		a = append(a,
			"-fw_cfg", "name=opt/org.flatcar-linux/config,file="+optEscape(m.Config.Path),
			"-fw_cfg", "name=opt/com.coreos/config,file="+optEscape(m.Config.Path))
	}
	switch {
	case m.Tap != "":
		a = append(a,
			"-netdev", "tap,id=net0,ifname="+m.Tap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=net0,mac="+m.MAC)
	case m.MAC != "":
		// A NIC on a hub with no other port: the device is there (a
		// template's nodes get their tap behind it), no packet goes out.
		a = append(a,
			"-netdev", "hubport,id=net0,hubid=0",
			"-device", "virtio-net-pci,netdev=net0,mac="+m.MAC)
	}
	a = append(a,
		// Entropy for the guest: an API server starves without it.
		"-device", "virtio-rng-pci",
		// A new generation ID at every QEMU start: a guest kernel with
		// the vmgenid driver resumed from a saved state (a template, a
		// snapshot restored twice) reseeds its random number generator
		// instead of repeating another's. (kubelab's image reseeds from
		// virtio-rng itself: Debian's cloud kernel lacks the driver.)
		"-device", "vmgenid",
		// The guest hands the pages it frees back to the host (free page
		// reporting), so a node's RSS follows what it uses, not the most
		// it ever used.
		"-device", "virtio-balloon-pci,free-page-reporting=on",
		// Appended, so a restart keeps the earlier boots' output.
		"-chardev", "file,id=serial0,path="+optEscape(filepath.Join(m.Dir, ConsoleFile))+",append=on",
		"-serial", "chardev:serial0",
		"-pidfile", filepath.Join(m.Dir, PIDFile),
		"-qmp", "unix:"+filepath.Join(m.Dir, QMPFile)+",server=on,wait=off",
		"-daemonize")
	return a
}

// optEscape escapes a value inside a QEMU key=value option list.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// process finds the machine's QEMU: the pid in the pid file if that is the
// machine's process, else (pid file lost or stale) a scan of /proc for it,
// so a VM is never started twice.
func (d *Driver) process(m driver.Machine) (int, bool) {
	if data, err := os.ReadFile(PIDFilePath(m)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 && isMachineProcess(pid, m) {
			return pid, true
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if pid, err := strconv.Atoi(filepath.Base(p)); err == nil && isMachineProcess(pid, m) {
			return pid, true
		}
	}
	return 0, false
}

// isMachineProcess checks /proc/pid/cmdline for this machine's -name and
// -pidfile, so a PID reused by another process after a host reboot or a
// crash is not taken for the VM. A zombie has an empty cmdline: gone.
func isMachineProcess(pid int, m driver.Machine) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	var name, pidfile bool
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-name":
			name = name || args[i+1] == m.ID()
		case "-pidfile":
			pidfile = pidfile || args[i+1] == PIDFilePath(m)
		}
	}
	return name && pidfile
}

// PID returns the QEMU process id of a running machine (0 if it does not run).
func (d *Driver) PID(m driver.Machine) int {
	if pid, alive := d.process(m); alive {
		return pid
	}
	return 0
}
