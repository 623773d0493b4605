// Package driver is the hypervisor interface: one small Driver interface
// every hypervisor implements (qemu/, later libvirt/ and xen/), plus
// optional capability interfaces a driver may add (Reprovisioner,
// Accelerated, Describer). The lifecycle asks for a capability with a type
// assertion, the way kind's providers and Talos' provisioners do.
//
// A Machine is a plain value describing one VM; everything a driver makes
// for it (disk overlay, console log, pid file, control socket, generated
// hypervisor config) lives in Machine.Dir, so Delete can remove exactly
// that and nothing else.
package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// ConfigKind says how a machine receives its node configuration.
type ConfigKind string

const (
	// ConfigNone attaches no configuration medium.
	ConfigNone ConfigKind = ""
	// ConfigOverlay attaches a tar file (a multiple of 512 bytes) as a
	// read-only raw virtio disk with serial versions.NodeConfigDisk.
	ConfigOverlay ConfigKind = "overlay"
	// ConfigCloudInit attaches a NoCloud "cidata" ISO. Path is either the
	// directory holding user-data, meta-data and network-config (the driver
	// builds the ISO in Dir) or a ready .iso file.
	ConfigCloudInit ConfigKind = "cloud-init"
	// ConfigIgnition hands an Ignition JSON file to the guest (QEMU: fw_cfg
	// under both the Flatcar and the Fedora CoreOS key).
	ConfigIgnition ConfigKind = "ignition"
)

// Config is a machine's configuration medium.
type Config struct {
	Kind ConfigKind
	Path string
}

// Machine describes one VM. Drivers never modify the files it points at
// (BaseImage, Kernel, Initrd, Config.Path); they only write into Dir.
type Machine struct {
	// Lab and Name identify the machine; the hypervisor sees ID()
	// ("<lab>-<name>"), so processes and domains can be told apart.
	Lab, Name string
	// Dir is the node directory: the disk overlay, console log, pid file
	// and control socket live here.
	Dir       string
	CPUs      int
	MemoryMiB uint64
	// DiskGiB is the virtual size of the node disk; 0 keeps the base
	// image's size. A disk is grown, never shrunk.
	DiskGiB uint64
	// BaseImage is the qcow2 the node disk is an overlay on.
	BaseImage string
	// Kernel, Initrd and Cmdline select direct kernel boot; an empty
	// Kernel boots from the disk.
	Kernel, Initrd, Cmdline string
	// MAC and Tap attach one NIC to an existing tap device (made by the
	// host network); Netns is the network namespace the tap lives in, and
	// the hypervisor process runs there. A MAC without a Tap gives a NIC
	// connected to nothing (a template's); no MAC means no NIC.
	MAC, Tap, Netns string
	// Bridge is the lab bridge, for drivers that make their own interface
	// and plug it in (Xen's vif-bridge, libvirt's type='bridge'); the QEMU
	// driver uses Tap and ignores it.
	Bridge string
	Config Config
	// Template is the directory of a template (see Templater) made for
	// machines of this shape: base image, kernel, command line, CPUs,
	// memory and disk size. Empty: the machine boots.
	Template string
}

// ID is the name the hypervisor knows the machine by.
func (m Machine) ID() string {
	if m.Lab == "" {
		return m.Name
	}
	return m.Lab + "-" + m.Name
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Validate reports the first problem with m that would make a driver fail
// later in a less readable way.
func (m Machine) Validate() error {
	switch {
	case m.Name == "":
		return errors.New("machine: name is empty")
	case !idRE.MatchString(m.ID()):
		return fmt.Errorf("machine %q: name may only use letters, digits, '.', '_' and '-'", m.ID())
	case m.Dir == "" || !filepath.IsAbs(m.Dir):
		return fmt.Errorf("machine %s: dir %q must be an absolute path", m.ID(), m.Dir)
	case m.CPUs < 0:
		return fmt.Errorf("machine %s: cpus %d is negative", m.ID(), m.CPUs)
	case m.MemoryMiB < 64:
		return fmt.Errorf("machine %s: memory %d MiB is too small (at least 64)", m.ID(), m.MemoryMiB)
	case m.BaseImage == "":
		return fmt.Errorf("machine %s: no base image", m.ID())
	case m.Kernel == "" && (m.Initrd != "" || m.Cmdline != ""):
		return fmt.Errorf("machine %s: initrd or kernel command line given without a kernel", m.ID())
	case m.Tap != "" && m.MAC == "":
		return fmt.Errorf("machine %s: tap %s given without a MAC address", m.ID(), m.Tap)
	}
	if m.MAC != "" {
		if _, err := net.ParseMAC(m.MAC); err != nil {
			return fmt.Errorf("machine %s: MAC: %w", m.ID(), err)
		}
	}
	switch m.Config.Kind {
	case ConfigNone:
	case ConfigOverlay, ConfigCloudInit, ConfigIgnition:
		if m.Config.Path == "" {
			return fmt.Errorf("machine %s: %s config without a path", m.ID(), m.Config.Kind)
		}
	default:
		return fmt.Errorf("machine %s: unknown config kind %q (overlay, cloud-init, ignition)", m.ID(), m.Config.Kind)
	}
	return nil
}

// State is what a driver knows about a machine.
type State string

const (
	// StateAbsent: nothing of the machine exists (no disk).
	StateAbsent State = "absent"
	// StateStopped: the machine is created (disk, config media) but does
	// not run: libvirt's "shut off", a QEMU node without a live process.
	StateStopped State = "stopped"
	// StateRunning: the hypervisor runs the guest.
	StateRunning State = "running"
	// StatePaused: the hypervisor process exists but the guest does not
	// execute (paused, or stopped on an error); Start resumes it.
	StatePaused State = "paused"
)

// Driver is what every hypervisor implements. All methods are idempotent:
// Create on a created machine, Start on a running one, Stop on a stopped one
// and Delete on an absent one do nothing and succeed.
type Driver interface {
	// Name is the driver's name as written in lab.yaml ("qemu").
	Name() string
	// Create makes the node disk (an overlay on the base image) and the
	// configuration media. Existing disks are reused.
	Create(ctx context.Context, m Machine) error
	// Start boots a created machine; it does nothing if it runs already.
	Start(ctx context.Context, m Machine) error
	// Stop shuts the guest down gracefully (ACPI power button), and kills
	// it if it has not stopped after the driver's timeout.
	Stop(ctx context.Context, m Machine) error
	// Delete stops the machine at once and removes everything the driver
	// made in Dir (Dir itself too when it is then empty).
	Delete(ctx context.Context, m Machine) error
	State(ctx context.Context, m Machine) (State, error)
	// ConsolePath is the file the guest's serial console is written to;
	// it is kept across restarts (appended to).
	ConsolePath(m Machine) string
}

// Reprovisioner is a driver that can give a machine a fresh disk from its
// base image (for `kubelab refresh`: the node runs its first boot, and so
// its configuration, again). The machine must be stopped.
type Reprovisioner interface {
	Reprovision(ctx context.Context, m Machine) error
}

// Accelerated is a driver that reports which CPU accelerator its machines
// get ("kvm" or "tcg"); tests and timeouts scale by it.
type Accelerated interface {
	Accelerator(ctx context.Context) (string, error)
}

// Describer is a driver that can show what it would run for a machine
// (the hypervisor command line or domain config) without running it, for
// `--dry-run` and for people reading the lab directory.
type Describer interface {
	Describe(ctx context.Context, m Machine) (string, error)
}

// ConsoleSize returns the current size of a console log (0 if it does not
// exist): record it before Start and pass it to WaitConsole, so a marker
// from an earlier boot in the appended log is not mistaken for this one.
func ConsoleSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// WaitConsole waits until marker appears in the console log at path after
// offset from, polling once a second. It gives up when ctx
// ends, or early when alive (if not nil) reports the machine is gone.
func WaitConsole(ctx context.Context, path string, from int64, marker string, alive func() bool) error {
	return WaitConsoleWith(ctx, path, from, marker, WaitOptions{Alive: alive})
}

// WaitOptions are WaitConsoleWith's optional hooks.
type WaitOptions struct {
	// Alive, when set, is asked after each poll; false ends the wait
	// early (the machine is gone).
	Alive func() bool
	// Observe, when set, gets the console output read after from, in
	// order, as it arrives (and the whole log again if it is replaced),
	// e.g. to feed a StageScanner. It must not keep the slice.
	Observe func(chunk []byte)
}

// WaitConsoleWith is WaitConsole with hooks to follow the output while
// waiting.
func WaitConsoleWith(ctx context.Context, path string, from int64, marker string, o WaitOptions) error {
	if marker == "" {
		return errors.New("wait for console: empty marker")
	}
	var buf []byte
	off := from
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if f, err := os.Open(path); err == nil {
			if st, err := f.Stat(); err == nil && st.Size() < off {
				off, buf = 0, nil // the log was replaced: read it from the start
			}
			chunk := make([]byte, 64<<10)
			for {
				n, err := f.ReadAt(chunk, off)
				buf = append(buf, chunk[:n]...)
				if o.Observe != nil && n > 0 {
					o.Observe(chunk[:n])
				}
				off += int64(n)
				if err != nil || n == 0 {
					break
				}
			}
			f.Close()
			if bytes.Contains(buf, []byte(marker)) {
				return nil
			}
			// Keep only a tail long enough to hold a marker split over reads.
			if keep := len(marker) + 1; len(buf) > keep {
				buf = append(buf[:0], buf[len(buf)-keep:]...)
			}
		}
		if o.Alive != nil && !o.Alive() {
			return fmt.Errorf("wait for %q in %s: the machine stopped before printing it", marker, path)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %q in %s: %w", marker, path, ctx.Err())
		case <-tick.C:
		}
	}
}

// The boot stages a StageScanner reports, in the order a boot goes through
// them.
const (
	StageStarting = "starting" // nothing recognisable on the console yet
	StageKernel   = "kernel"   // the kernel has printed its banner
	StageSystemd  = "systemd"  // the init system has taken over
	StageReady    = "ready"    // the readiness marker was printed
)

var stageNames = []string{StageStarting, StageKernel, StageSystemd, StageReady}

// StageScanner follows a console's output and says how far the boot has
// come: starting, kernel ("Linux version"), systemd ("systemd[1]" or
// "Welcome to"), ready (the readiness marker). Stages only move forward;
// a text split over two chunks is still found. It is not safe for
// concurrent use.
type StageScanner struct {
	signals [][]string // the texts that mark each stage, by index in stageNames
	stage   int
	keep    int
	tail    []byte
}

// NewStageScanner returns a scanner in stage "starting" that reports
// "ready" when marker appears (never, if marker is empty).
func NewStageScanner(marker string) *StageScanner {
	s := &StageScanner{signals: [][]string{
		nil, // starting: where every boot begins
		{"Linux version"},
		{"systemd[1]", "Welcome to"},
		nil, // ready: the marker, below
	}}
	if marker != "" {
		s.signals[3] = []string{marker}
	}
	for _, sigs := range s.signals {
		for _, sig := range sigs {
			s.keep = max(s.keep, len(sig)-1)
		}
	}
	return s
}

// Stage is the stage reached so far.
func (s *StageScanner) Stage() string { return stageNames[s.stage] }

// Feed reads the next chunk of console output and returns the stage
// reached and whether this chunk moved it.
func (s *StageScanner) Feed(chunk []byte) (stage string, changed bool) {
	data := append(s.tail, chunk...)
	for i := len(s.signals) - 1; i > s.stage; i-- {
		found := false
		for _, sig := range s.signals[i] {
			if bytes.Contains(data, []byte(sig)) {
				found = true
				break
			}
		}
		if found {
			s.stage, changed = i, true
			break
		}
	}
	if len(data) > s.keep {
		data = data[len(data)-s.keep:]
	}
	s.tail = append(s.tail[:0:0], data...)
	return s.Stage(), changed
}

// Reprovision is Reprovisioner for drivers whose machine is its disk: it
// refuses a machine that runs, removes the given disk files of the machine
// (under m.Dir) and creates the machine again, so it gets a fresh disk
// from its base image.
func Reprovision(ctx context.Context, d Driver, m Machine, files ...string) error {
	st, err := d.State(ctx, m)
	if err != nil {
		return err
	}
	if st == StateRunning || st == StatePaused {
		return fmt.Errorf("machine %s: reprovision: the machine runs; stop it first", m.ID())
	}
	for _, f := range files {
		if err := os.Remove(filepath.Join(m.Dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("machine %s: reprovision: %w", m.ID(), err)
		}
	}
	return d.Create(ctx, m)
}
