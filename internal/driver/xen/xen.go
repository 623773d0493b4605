// Package xen is the Xen driver: each machine is a paravirtualised (PV)
// guest that xl, Xen's own toolstack, creates from a domain file in the
// node directory (the "Kubernetes and Xen" guide's way). kubelab runs in
// dom0; the guest boots the image's kernel directly, its disk is a qcow2
// overlay served by xl's qdisk backend or a raw copy served by blkback,
// its NIC is plugged into the lab bridge by xl's vif-bridge script, and
// its console is the log xenconsoled keeps of it.
//
// Xen keeps no definition of a stopped guest: a machine is "stopped" when
// its files exist and xl knows no domain of its name.
package xen

import (
	"context"
	"encoding/json"
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
)

// Files the driver makes in a machine's directory (besides the disk).
const (
	ConsoleFile = "console.log" // a link to xenconsoled's log of the guest
)

// DefaultConsoleLogDir is where Debian's xenconsoled writes guest logs
// (--log-dir).
const DefaultConsoleLogDir = "/var/log/xen/console"

// DefaultQDisk is the QEMU that xl starts as the qdisk backend (Debian's
// qemu-system-xen).
const DefaultQDisk = "/usr/libexec/xen-qemu-system-i386"

// Options configure the driver; the zero value uses xl and qemu-img from
// PATH, qcow2 disks and a 3 minute clean shutdown.
type Options struct {
	XL, QEMUImg string
	// DiskFormat is qcow2 (default) or raw.
	DiskFormat string
	// StopTimeout is how long Stop waits for the guest to shut itself
	// down before it destroys the domain.
	StopTimeout time.Duration
	// ConsoleLogDir is xenconsoled's --log-dir; QDisk the qdisk backend.
	ConsoleLogDir, QDisk string
}

// Driver drives Xen through xl.
type Driver struct{ opts Options }

// New returns a Xen driver.
func New(opts Options) *Driver {
	if opts.XL == "" {
		opts.XL = "xl"
	}
	if opts.DiskFormat == "" {
		opts.DiskFormat = DiskQCOW2
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 3 * time.Minute
	}
	if opts.ConsoleLogDir == "" {
		opts.ConsoleLogDir = DefaultConsoleLogDir
	}
	if opts.QDisk == "" {
		opts.QDisk = DefaultQDisk
	}
	return &Driver{opts: opts}
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "xen" }

// ConsolePath implements driver.Driver.
func (d *Driver) ConsolePath(m driver.Machine) string { return filepath.Join(m.Dir, ConsoleFile) }

// DomainFile is the machine's xl domain file, <node>.cfg as in the guide.
func DomainFile(m driver.Machine) string { return filepath.Join(m.Dir, m.Name+".cfg") }

func (d *Driver) media() media.Tools { return media.Tools{QEMUImg: d.opts.QEMUImg} }

func (d *Driver) guestLog(m driver.Machine) string {
	return filepath.Join(d.opts.ConsoleLogDir, "guest-"+m.ID()+".log")
}

// xl runs one xl command and returns its standard output; the error holds
// what xl said.
func (d *Driver) xl(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, d.opts.XL, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("xl %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// CheckDaemon tells whether xl reaches a running Xen hypervisor here
// (this host is a dom0 with xenstored running); the error says what is
// missing.
func (d *Driver) CheckDaemon() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.xl(ctx, "info"); err != nil {
		return fmt.Errorf("xen: %v; this host must be a Xen dom0 with the toolstack running (boot it under the Xen hypervisor and start xencommons)", err)
	}
	return nil
}

// Info is what `xl info` says about the host that kubelab uses.
type Info struct {
	FreeMemoryMiB uint64
	XenVersion    string
}

// HostInfo reads `xl info`.
func (d *Driver) HostInfo(ctx context.Context) (Info, error) {
	out, err := d.xl(ctx, "info")
	if err != nil {
		return Info{}, err
	}
	return ParseInfo(out)
}

// ParseInfo reads the "key : value" lines of `xl info`.
func ParseInfo(out string) (Info, error) {
	var info Info
	var major, minor, extra string
	found := false
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "free_memory":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return Info{}, fmt.Errorf("xl info: free_memory %q: %w", v, err)
			}
			info.FreeMemoryMiB, found = n, true
		case "xen_major":
			major = v
		case "xen_minor":
			minor = v
		case "xen_extra":
			extra = v
		}
	}
	if !found {
		return Info{}, errors.New("xl info: no free_memory line")
	}
	if major != "" {
		info.XenVersion = major + "." + minor + extra
	}
	return info, nil
}

// Preflight implements the lifecycle's check before anything is made:
// the machines about to start must fit into the memory Xen has free, as
// `xl info` reports it. Machines that run already are not counted.
func (d *Driver) Preflight(ctx context.Context, ms []driver.Machine) error {
	var need uint64
	var names []string
	for _, m := range ms {
		st, err := d.State(ctx, m)
		if err != nil {
			return err
		}
		if st == driver.StateRunning || st == driver.StatePaused {
			continue
		}
		need += m.MemoryMiB
		names = append(names, fmt.Sprintf("%s %d MiB", m.Name, m.MemoryMiB))
	}
	if need == 0 {
		return nil
	}
	info, err := d.HostInfo(ctx)
	if err != nil {
		return fmt.Errorf("xen: %w", err)
	}
	if need > info.FreeMemoryMiB {
		return fmt.Errorf("xen: the nodes to start need %d MiB (%s) but Xen has %d MiB free (xl info: free_memory); give them less memory in lab.yaml, or dom0 less (dom0_mem=)", need, strings.Join(names, ", "), info.FreeMemoryMiB)
	}
	return nil
}

func (d *Driver) check(m driver.Machine) error {
	if err := m.Validate(); err != nil {
		return err
	}
	switch {
	case m.Template != "":
		return fmt.Errorf("machine %s: the Xen driver has no node templates", m.ID())
	case m.Netns != "":
		return fmt.Errorf("machine %s: the Xen driver cannot run a guest in network namespace %s (vif-bridge plugs guests in dom0's own)", m.ID(), m.Netns)
	case m.Config.Kind == driver.ConfigIgnition:
		return fmt.Errorf("machine %s: a Xen PV guest cannot get an Ignition config (no fw_cfg); use overlay or cloud-init", m.ID())
	}
	return nil
}

func (d *Driver) domainConfig(m driver.Machine) DomainConfig {
	c := DomainConfig{Machine: m, Disk: diskFile(m, d.opts.DiskFormat), DiskFormat: d.opts.DiskFormat}
	if m.Config.Kind != driver.ConfigNone {
		c.ConfigFile = media.ConfigFile(m)
	}
	return c
}

// Describe implements driver.Describer: the domain file Create writes.
func (d *Driver) Describe(_ context.Context, m driver.Machine) (string, error) {
	if err := d.check(m); err != nil {
		return "", err
	}
	return Render(d.domainConfig(m))
}

// domain is what xl knows about a machine's domain.
type domain struct {
	found bool
	state string // xl list's state flags, e.g. "-b----"
}

func (dom domain) running() bool {
	return dom.found && !strings.ContainsAny(dom.state, "scd")
}

// find asks xl about the machine's domain and refuses one that kubelab did
// not make for this machine: its disks must be in the node directory.
func (d *Driver) find(ctx context.Context, m driver.Machine) (domain, error) {
	// The domain may go between two calls (a guest that shut down is
	// removed by xl's monitor of it): gone is gone, at either.
	gone := func(err error) bool { return strings.Contains(err.Error(), "invalid domain identifier") }
	out, err := d.xl(ctx, "list", m.ID())
	if err != nil {
		if gone(err) {
			return domain{}, nil
		}
		return domain{}, fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	state, err := parseListState(out, m.ID())
	if err != nil {
		return domain{}, fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	long, err := d.xl(ctx, "list", "-l", m.ID())
	if err != nil {
		if gone(err) {
			return domain{}, nil
		}
		return domain{}, fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	if !ownsDomain(long, m.Dir) {
		if leaving(state, long) {
			return d.awaitGone(ctx, m)
		}
		return domain{}, fmt.Errorf("machine %s: Xen runs a domain of that name that kubelab did not make for %s (none of its disks is in that directory); it is left alone: rename the lab or the node, or remove the domain yourself", m.ID(), m.Dir)
	}
	return domain{found: true, state: state}, nil
}

// leaving tells a domain on its way out: shut down or dying, with its
// devices already torn down (xl list -l then shows no disks, so whose it
// was cannot be told). Seen in the nested Xen test right after a clean
// shutdown.
func leaving(state, listLong string) bool {
	disks, ok := domainDisks(listLong)
	// An unreadable listing is that of a half torn-down domain.
	return strings.ContainsAny(state, "sd") && (!ok || len(disks) == 0)
}

// leaveTimeout bounds the wait for a domain on its way out.
const leaveTimeout = time.Minute

// awaitGone waits until a leaving domain is gone: xl's monitor of the
// guest removes it within seconds.
func (d *Driver) awaitGone(ctx context.Context, m driver.Machine) (domain, error) {
	deadline := time.Now().Add(leaveTimeout)
	for {
		out, err := d.xl(ctx, "list", m.ID())
		if err != nil && strings.Contains(err.Error(), "invalid domain identifier") {
			return domain{}, nil
		}
		if err != nil {
			return domain{}, fmt.Errorf("machine %s: %w", m.ID(), err)
		}
		state, _ := parseListState(out, m.ID())
		if time.Now().After(deadline) {
			return domain{}, fmt.Errorf("machine %s: a domain of that name has been shutting down for %s (state %s) and shows no disks to tell whose it is; see xl list, and remove it with xl destroy %s if it is this node's", m.ID(), leaveTimeout, state, m.ID())
		}
		select {
		case <-ctx.Done():
			return domain{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// parseListState reads the state column of `xl list NAME`.
func parseListState(out, name string) (string, error) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[0] == name {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("xl list: no line for %s in %q", name, out)
}

// ownsDomain tells whether `xl list -l` output describes a domain with a
// disk inside dir.
func ownsDomain(listLong, dir string) bool {
	disks, _ := domainDisks(listLong)
	for _, d := range disks {
		if filepath.Dir(d) == filepath.Clean(dir) {
			return true
		}
	}
	return false
}

// domainDisks reads the disks' paths from `xl list -l` output; ok is false
// when the output is not xl's JSON.
func domainDisks(listLong string) (paths []string, ok bool) {
	var doms []struct {
		Config struct {
			Disks []struct {
				PdevPath string `json:"pdev_path"`
			} `json:"disks"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(listLong), &doms); err != nil {
		return nil, false
	}
	for _, dom := range doms {
		for _, disk := range dom.Config.Disks {
			paths = append(paths, disk.PdevPath)
		}
	}
	return paths, true
}

// State implements driver.Driver.
func (d *Driver) State(ctx context.Context, m driver.Machine) (driver.State, error) {
	dom, err := d.find(ctx, m)
	if err != nil {
		return "", err
	}
	switch {
	case dom.found && strings.Contains(dom.state, "p"):
		return driver.StatePaused, nil
	case dom.running():
		return driver.StateRunning, nil
	}
	if _, err := os.Stat(diskFile(m, d.opts.DiskFormat)); err == nil {
		return driver.StateStopped, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return driver.StateAbsent, nil
}

// Create implements driver.Driver: the node disk (a qcow2 overlay on the
// image, or a raw copy of it), the configuration medium, the domain file
// and the console link.
func (d *Driver) Create(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	if d.opts.DiskFormat == DiskQCOW2 {
		if _, err := os.Stat(d.opts.QDisk); err != nil {
			return fmt.Errorf("machine %s: qcow2 node disks need xl's qdisk backend %s, which is not here: apt-get install qemu-system-xen, or set xen.disk: raw in lab.yaml", m.ID(), d.opts.QDisk)
		}
	}
	if _, err := os.Stat(m.BaseImage); err != nil {
		return fmt.Errorf("machine %s: base image: %w", m.ID(), err)
	}
	dom, err := d.find(ctx, m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	disk := diskFile(m, d.opts.DiskFormat)
	if _, err := os.Stat(disk); errors.Is(err, fs.ErrNotExist) {
		if err := d.makeDisk(ctx, m, disk); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	} else if err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	} else if !dom.found && d.opts.DiskFormat == DiskQCOW2 {
		if err := d.media().Grow(ctx, disk, m.DiskGiB); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	}
	if err := media.PrepareConfig(m); err != nil {
		return err
	}
	cfg, err := Render(d.domainConfig(m))
	if err != nil {
		return err
	}
	if err := os.WriteFile(DomainFile(m), []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return d.linkConsole(m)
}

// makeDisk makes the node disk: an overlay, or a raw copy (sparse) grown
// to the machine's size. Either appears under its name only when whole.
func (d *Driver) makeDisk(ctx context.Context, m driver.Machine, disk string) error {
	if d.opts.DiskFormat == DiskQCOW2 {
		return d.media().CreateOverlay(ctx, m.BaseImage, disk, m.DiskGiB)
	}
	tmp := disk + ".tmp"
	qemuImg := d.opts.QEMUImg
	if qemuImg == "" {
		qemuImg = "qemu-img"
	}
	steps := [][]string{{"convert", "-q", "-O", "raw", m.BaseImage, tmp}}
	if m.DiskGiB > 0 {
		size, err := d.media().VirtualSize(ctx, m.BaseImage)
		if err != nil {
			return err
		}
		if media.GiB(m.DiskGiB) > size {
			steps = append(steps, []string{"resize", "-q", "-f", "raw", tmp, fmt.Sprintf("%dG", m.DiskGiB)})
		}
	}
	for _, args := range steps {
		if out, err := exec.CommandContext(ctx, qemuImg, args...).CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("raw disk: qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, disk)
}

// linkConsole points console.log at xenconsoled's log of the guest, which
// it appends to across boots of the same name.
func (d *Driver) linkConsole(m driver.Machine) error {
	link := d.ConsolePath(m)
	if target, err := os.Readlink(link); err == nil && target == d.guestLog(m) {
		return nil
	}
	os.Remove(link)
	if err := os.Symlink(d.guestLog(m), link); err != nil {
		return fmt.Errorf("machine %s: console link: %w", m.ID(), err)
	}
	return nil
}

// Start implements driver.Driver: a running domain is left alone, a
// paused one unpaused, otherwise `xl create` of the domain file.
func (d *Driver) Start(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	dom, err := d.find(ctx, m)
	if err != nil {
		return err
	}
	switch {
	case dom.found && strings.Contains(dom.state, "p"):
		_, err := d.xl(ctx, "unpause", m.ID())
		return err
	case dom.running():
		return nil
	case dom.found: // shut down or crashed, not yet cleaned up
		if _, err := d.xl(ctx, "destroy", m.ID()); err != nil {
			return err
		}
	}
	if _, err := os.Stat(DomainFile(m)); err != nil {
		return fmt.Errorf("machine %s: not created (no %s): %w", m.ID(), DomainFile(m), err)
	}
	if err := d.consoleLogged(); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	if err := d.linkConsole(m); err != nil {
		return err
	}
	if _, err := d.xl(ctx, "create", DomainFile(m)); err != nil {
		return fmt.Errorf("machine %s: %w (see %s)", m.ID(), err, DomainFile(m))
	}
	return nil
}

// consoleLogged checks that xenconsoled writes guest consoles to files:
// kubelab reads the readiness marker and the boot stages from there.
func (d *Driver) consoleLogged() error {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(args[0]) != "xenconsoled" {
			continue
		}
		logDir := "/var/log/xen/console"
		logged := false
		for i, a := range args {
			switch {
			case a == "--log=guest" || a == "--log=all" || (a == "--log" && i+1 < len(args) && (args[i+1] == "guest" || args[i+1] == "all")):
				logged = true
			case strings.HasPrefix(a, "--log-dir="):
				logDir = strings.TrimPrefix(a, "--log-dir=")
			case a == "--log-dir" && i+1 < len(args):
				logDir = args[i+1]
			}
		}
		if !logged {
			return errors.New("xenconsoled does not log guest consoles, which kubelab reads; set XENCONSOLED_TRACE=guest in /etc/default/xencommons and restart xencommons (or run xenconsoled --log=guest)")
		}
		if filepath.Clean(logDir) != filepath.Clean(d.opts.ConsoleLogDir) {
			return fmt.Errorf("xenconsoled logs guest consoles to %s, not %s where kubelab reads them", logDir, d.opts.ConsoleLogDir)
		}
		return nil
	}
	return errors.New("xenconsoled is not running; start xencommons")
}

// Stop implements driver.Driver: a clean shutdown request to the guest
// (xl shutdown), waited for up to the stop timeout, then xl destroy.
func (d *Driver) Stop(ctx context.Context, m driver.Machine) error {
	dom, err := d.find(ctx, m)
	if err != nil {
		return err
	}
	if !dom.found {
		return nil
	}
	if dom.running() {
		sctx, cancel := context.WithTimeout(ctx, d.opts.StopTimeout)
		_, _ = d.xl(sctx, "shutdown", "-w", m.ID())
		cancel()
	}
	// A guest that shut down stays listed until xl's monitor of it
	// destroys it (on_poweroff); wait a little for that, then do it.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Second) {
		if dom, err = d.find(ctx, m); err != nil || !dom.found {
			return err
		}
		if time.Now().After(deadline) {
			break
		}
	}
	_, err = d.xl(ctx, "destroy", m.ID())
	return err
}

// driverFiles are what the driver makes in a machine's Dir; media's
// cidata ISO and the domain file are added by name.
var driverFiles = []string{media.DiskFile, RawDiskFile, media.CIDataFile, ConsoleFile}

// Delete implements driver.Driver: the domain destroyed, the driver's
// files and xenconsoled's log of the guest removed.
func (d *Driver) Delete(ctx context.Context, m driver.Machine) error {
	if m.Dir == "" {
		return errors.New("machine: no dir")
	}
	dom, err := d.find(ctx, m)
	if err != nil {
		return err
	}
	if dom.found {
		if _, err := d.xl(ctx, "destroy", m.ID()); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	}
	for _, f := range append(driverFiles, filepath.Base(DomainFile(m))) {
		if err := os.Remove(filepath.Join(m.Dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("machine %s: delete: %w", m.ID(), err)
		}
	}
	if err := os.Remove(d.guestLog(m)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("machine %s: delete the console log: %w", m.ID(), err)
	}
	if err := os.Remove(m.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("machine %s: delete: %w", m.ID(), err)
	}
	return nil
}

// Reprovision implements driver.Reprovisioner: a fresh disk from the
// image, so the node boots as new. The domain must not run.
func (d *Driver) Reprovision(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	return driver.Reprovision(ctx, d, m, filepath.Base(diskFile(m, d.opts.DiskFormat)))
}
