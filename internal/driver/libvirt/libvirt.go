// Package libvirt is the driver that runs machines as libvirt domains,
// through libvirtd's RPC protocol in pure Go (go-libvirt; no cgo, no
// virsh). Each machine is a persistent domain "<lab>-<node>" carrying
// kubelab metadata, so kubelab finds exactly its own. Its files are those
// of the QEMU driver: a qcow2 overlay on the node image in the node
// directory (plain files rather than a storage pool: the lab directory
// holds everything a lab has, destroy removes it, and no pool outlives a
// lab), the configuration medium, the console log, and the domain XML for
// people to read.
//
// The NIC is kubelab's own tap (<interface type='ethernet'>, unmanaged),
// so libvirt needs no network of its own; libvirtd must therefore run in
// the network namespace of the lab's bridge.
package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/media"
	"github.com/kubelab/kubelab/internal/driver/qemu"
)

// Files the driver makes in a machine's Dir. Delete removes exactly these.
const (
	ConsoleFile = "console.log"
	DomainFile  = "domain.xml" // the domain as defined, for people to read
)

var driverFiles = []string{media.DiskFile, media.DiskFile + ".tmp", media.CIDataFile, ConsoleFile, DomainFile}

// DefaultURI is libvirt's system daemon on this host.
const DefaultURI = "qemu:///system"

// Options tune the driver; the zero value is usable.
type Options struct {
	// URI is the libvirt connection (default qemu:///system).
	URI string
	// QEMUImg makes the node disks (default qemu-img from PATH).
	QEMUImg string
	// Accel forces "kvm" or "tcg"; empty asks libvirt and, when it offers
	// KVM, checks that a Linux kernel actually boots under it here.
	Accel string
	// ProbeKernel is the kernel that check boots when no machine's kernel
	// is at hand (the lab's image; it may not exist yet).
	ProbeKernel string
	// StopTimeout is how long Stop waits after the ACPI power button
	// before it destroys the domain (default 3 minutes).
	StopTimeout time.Duration
}

// Driver runs machines as libvirt domains. Use New; it is safe for
// concurrent use on different machines (they share one connection, which
// go-libvirt multiplexes).
type Driver struct {
	opts Options

	probe      *qemu.KVMProbe
	capsOnce   sync.Once
	emulator   string
	kvmOffered bool
	capsErr    error

	connMu sync.Mutex
	conn   *golibvirt.Libvirt
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.Reprovisioner = (*Driver)(nil)
	_ driver.Accelerated   = (*Driver)(nil)
	_ driver.Describer     = (*Driver)(nil)
)

// New returns a libvirt driver.
func New(opts Options) *Driver {
	if opts.URI == "" {
		opts.URI = DefaultURI
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 3 * time.Minute
	}
	return &Driver{opts: opts, probe: &qemu.KVMProbe{Kernel: opts.ProbeKernel}}
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return "libvirt" }

// ConsolePath implements driver.Driver.
func (d *Driver) ConsolePath(m driver.Machine) string { return filepath.Join(m.Dir, ConsoleFile) }

func (d *Driver) media() media.Tools { return media.Tools{QEMUImg: d.opts.QEMUImg} }

// connect returns the driver's connection to libvirtd, made on first use
// and again when it was lost; the error says how to start libvirtd. The
// connection lives as long as the process (a kubelab command).
func (d *Driver) connect() (*golibvirt.Libvirt, error) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn != nil && d.conn.IsConnected() {
		return d.conn, nil
	}
	u, err := url.Parse(d.opts.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt: uri %q: %w", d.opts.URI, err)
	}
	local := isLocal(u)
	if local && u.Path == "/session" && u.Query().Get("socket") == "" {
		// go-libvirt dials the system socket unless told otherwise; the
		// session daemon listens in the user's runtime directory.
		q := u.Query()
		q.Set("socket", sessionSocket())
		u.RawQuery = q.Encode()
	}
	l, err := golibvirt.ConnectToURI(u)
	if err != nil {
		hint := "start it: `virtlogd -d && libvirtd -d` as root, in the lab's network namespace if lab.yaml sets network.namespace"
		switch {
		case !local:
			hint = "check that libvirtd runs there and listens for this transport (libvirtd --listen with listen_tcp/listen_tls, or sshd for ssh), and that the host and port are right"
		case u.Path == "/session":
			hint = "start your session daemon: `libvirtd -d` as yourself"
		}
		return nil, fmt.Errorf("libvirt: cannot reach libvirtd at %s: %v; %s", d.opts.URI, err, hint)
	}
	if !local {
		if err := sameHost(l, d.opts.URI); err != nil {
			_ = l.Disconnect()
			return nil, err
		}
	}
	d.conn = l
	return l, nil
}

// isLocal tells whether the URI names libvirtd's unix socket on this host
// (qemu:///system, qemu+unix://...) rather than a network transport.
func isLocal(u *url.URL) bool {
	_, transport, _ := strings.Cut(u.Scheme, "+")
	return transport == "unix" || (transport == "" && u.Host == "")
}

// sameHost refuses a libvirtd that runs on another host. Each node's disk,
// kernel, config medium and console log are files in the lab directory on
// this host, and its NIC is a tap on this host's bridge: a daemon
// elsewhere could define the domains but not run them. A network
// transport to this host's own daemon (a TCP or TLS listener, or ssh to
// root@localhost) works like the socket.
func sameHost(l *golibvirt.Libvirt, uri string) error {
	theirs, err := l.ConnectGetHostname()
	if err != nil {
		return fmt.Errorf("libvirt: ask %s for its host name: %w", uri, err)
	}
	ours, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("libvirt: this host's name: %w", err)
	}
	if theirs != ours {
		return fmt.Errorf("libvirt: %s is libvirtd on host %q, not on this one (%q): kubelab keeps each node's disk, kernel, config medium and tap on the host it runs on, so run kubelab on %q, or point libvirt.uri at this host's libvirtd", uri, theirs, ours, theirs)
	}
	return nil
}

// CheckDaemon tells whether libvirtd answers at the driver's URI and can
// run x86_64 QEMU guests; the error says what to start or install.
func (d *Driver) CheckDaemon() error {
	c, err := d.connect()
	if err != nil {
		return err
	}
	_, _, err = capabilities(c)
	return err
}

func sessionSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "libvirt", "libvirt-sock")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "libvirt", "libvirt-sock")
}

// Accelerator implements driver.Accelerated: "kvm" when libvirt offers
// KVM domains for x86_64 and a Linux kernel really boots under KVM here
// (see qemu.KVMProbe), else "tcg".
func (d *Driver) Accelerator(ctx context.Context) (string, error) {
	return d.accelerator(ctx, "")
}

// accelerator is Accelerator for a guest of the given kernel (empty: the
// probe's default).
func (d *Driver) accelerator(ctx context.Context, kernel string) (string, error) {
	if d.opts.Accel != "" { // forced: the probe only checks the value
		return d.probeAnswer(ctx, "", kernel)
	}
	d.capsOnce.Do(func() {
		c, err := d.connect()
		if err != nil {
			d.capsErr = err
			return
		}
		d.emulator, d.kvmOffered, d.capsErr = capabilities(c)
	})
	if d.capsErr != nil {
		return "", d.capsErr
	}
	if !d.kvmOffered {
		return qemu.AccelTCG, nil
	}
	return d.probeAnswer(ctx, d.emulator, kernel)
}

func (d *Driver) probeAnswer(ctx context.Context, emulator, kernel string) (string, error) {
	a, err := d.probe.Answer(ctx, emulator, d.opts.Accel, kernel)
	if err != nil {
		return "", fmt.Errorf("libvirt: %w", err)
	}
	return a, nil
}

// capabilities reads libvirt's capabilities: the x86_64 emulator and
// whether KVM domains are offered. No x86_64 guest at all is an error.
func capabilities(c *golibvirt.Libvirt) (emulator string, kvm bool, err error) {
	raw, err := c.Capabilities()
	if err != nil {
		return "", false, fmt.Errorf("libvirt: capabilities: %w", err)
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(string(raw)); err != nil {
		return "", false, fmt.Errorf("libvirt: capabilities: %w", err)
	}
	found := false
	for _, g := range caps.Guests {
		if g.OSType != "hvm" || g.Arch.Name != "x86_64" {
			continue
		}
		found = true
		emulator = g.Arch.Emulator
		for _, dom := range g.Arch.Domains {
			if dom.Type == TypeKVM {
				kvm = true
				if dom.Emulator != "" {
					emulator = dom.Emulator
				}
			}
		}
	}
	if !found {
		return "", false, errors.New("libvirt: this libvirtd offers no x86_64 QEMU guests (install libvirt-daemon-driver-qemu and qemu-system-x86, then restart libvirtd)")
	}
	return emulator, kvm, nil
}

func (d *Driver) domainType(ctx context.Context, kernel string) (string, error) {
	accel, err := d.accelerator(ctx, kernel)
	if err != nil {
		return "", err
	}
	if accel == qemu.AccelKVM {
		return TypeKVM, nil
	}
	return TypeQEMU, nil
}

func (d *Driver) check(m driver.Machine) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if m.Template != "" {
		return fmt.Errorf("machine %s: the libvirt driver has no node templates", m.ID())
	}
	if m.Tap == "" && m.MAC != "" {
		return fmt.Errorf("machine %s: a NIC without a tap is not supported by the libvirt driver", m.ID())
	}
	return nil
}

// Describe implements driver.Describer: the domain XML Create defines.
func (d *Driver) Describe(ctx context.Context, m driver.Machine) (string, error) {
	if err := d.check(m); err != nil {
		return "", err
	}
	typ, err := d.domainType(ctx, m.Kernel)
	if err != nil {
		return "", err
	}
	return DomainXML(m, typ, os.Getuid(), os.Getgid())
}

// domain is a machine's domain as libvirt has it: found or not, and its
// state (shut off when there is none).
type domain struct {
	golibvirt.Domain
	found bool
	state int32
}

// find looks up the machine's domain and its state. A domain of that name
// that kubelab did not make for this node directory is an error: it is
// never touched.
func find(c *golibvirt.Libvirt, m driver.Machine) (domain, error) {
	dom, err := c.DomainLookupByName(m.ID())
	if golibvirt.IsNotFound(err) {
		return domain{state: stateShutoff}, nil
	}
	if err != nil {
		return domain{}, fmt.Errorf("machine %s: libvirt: look up domain: %w", m.ID(), err)
	}
	raw, err := c.DomainGetMetadata(dom, int32(golibvirt.DomainMetadataElement), golibvirt.OptString{MetadataNS}, 0)
	var meta machineMeta
	if err != nil || xml.Unmarshal([]byte(raw), &meta) != nil {
		return domain{}, fmt.Errorf("machine %s: libvirt has a domain %s that kubelab did not make; remove or rename it (virsh undefine %s) or rename the lab", m.ID(), m.ID(), m.ID())
	}
	if meta.Dir != m.Dir {
		return domain{}, fmt.Errorf("machine %s: libvirt domain %s belongs to another kubelab lab directory (%s); destroy that lab or rename this one", m.ID(), m.ID(), meta.Dir)
	}
	st, err := domainState(c, dom)
	if err != nil {
		return domain{}, fmt.Errorf("machine %s: libvirt: %w", m.ID(), err)
	}
	return domain{Domain: dom, found: true, state: st}, nil
}

// Libvirt's domain states (virDomainState).
const (
	stateRunning  = 1
	stateBlocked  = 2
	statePaused   = 3
	stateShutdown = 4 // being shut down
	stateShutoff  = 5
	stateCrashed  = 6
	statePMSusp   = 7
)

func domainState(c *golibvirt.Libvirt, dom golibvirt.Domain) (int32, error) {
	st, _, err := c.DomainGetState(dom, 0)
	return st, err
}

func active(st int32) bool { return st != stateShutoff && st != stateCrashed }

// Create implements driver.Driver: the node disk (an overlay on the base
// image, reused when present, grown while the domain is off), the
// configuration medium, and the domain, defined (again) from the machine.
func (d *Driver) Create(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	if _, err := os.Stat(m.BaseImage); err != nil {
		return fmt.Errorf("machine %s: base image: %w", m.ID(), err)
	}
	typ, err := d.domainType(ctx, m.Kernel)
	if err != nil {
		return err
	}
	c, err := d.connect()
	if err != nil {
		return err
	}
	dom, err := find(c, m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	disk := filepath.Join(m.Dir, media.DiskFile)
	if _, err := os.Stat(disk); errors.Is(err, fs.ErrNotExist) {
		if err := d.media().CreateOverlay(ctx, m.BaseImage, disk, m.DiskGiB); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	} else if err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	} else if !active(dom.state) {
		if err := d.media().Grow(ctx, disk, m.DiskGiB); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	}
	if err := media.PrepareConfig(m); err != nil {
		return err
	}
	return d.define(c, m, typ)
}

// define writes the domain XML to the node directory and defines it; a
// running domain gets the new definition at its next start.
func (d *Driver) define(c *golibvirt.Libvirt, m driver.Machine, typ string) error {
	doc, err := DomainXML(m, typ, os.Getuid(), os.Getgid())
	if err != nil {
		return err
	}
	header := "<!-- kubelab node " + m.Name + " of lab " + m.Lab + ", generated by kubelab from lab.yaml and defined in libvirt as " + m.ID() + "; edits here are not read -->\n"
	if err := os.WriteFile(filepath.Join(m.Dir, DomainFile), []byte(header+doc), 0o600); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	if _, err := c.DomainDefineXML(doc); err != nil {
		return fmt.Errorf("machine %s: libvirt: define domain (see %s): %w", m.ID(), filepath.Join(m.Dir, DomainFile), err)
	}
	return nil
}

// Start implements driver.Driver: a running domain is left alone, a paused
// one resumed, a stopped one started (defined first if libvirt lost it).
func (d *Driver) Start(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(m.Dir, media.DiskFile)); err != nil {
		return fmt.Errorf("machine %s: not created (no %s in %s); create it first", m.ID(), media.DiskFile, m.Dir)
	}
	c, err := d.connect()
	if err != nil {
		return err
	}
	dom, err := find(c, m)
	if err != nil {
		return err
	}
	if !dom.found {
		typ, err := d.domainType(ctx, m.Kernel)
		if err != nil {
			return err
		}
		if err := d.define(c, m, typ); err != nil {
			return err
		}
		if dom, err = find(c, m); err != nil {
			return err
		} else if !dom.found {
			return fmt.Errorf("machine %s: libvirt: domain gone right after it was defined", m.ID())
		}
	}
	switch dom.state {
	case stateRunning, stateBlocked, stateShutdown:
		return nil
	case statePaused, statePMSusp:
		if err := c.DomainResume(dom.Domain); err != nil {
			return fmt.Errorf("machine %s: libvirt: resume: %w", m.ID(), err)
		}
		return nil
	}
	if err := c.DomainCreate(dom.Domain); err != nil {
		hint := ""
		if m.Tap != "" && strings.Contains(err.Error(), m.Tap) {
			hint = fmt.Sprintf("; libvirtd does not see tap %s: it must run in the lab network's namespace (%s)", m.Tap, nsName(m))
		}
		return fmt.Errorf("machine %s: libvirt: start: %w%s (domain in %s, console in %s)", m.ID(), err, hint, filepath.Join(m.Dir, DomainFile), d.ConsolePath(m))
	}
	return nil
}

func nsName(m driver.Machine) string {
	if m.Netns == "" {
		return "the host's"
	}
	return "ip netns exec " + m.Netns + " libvirtd -d"
}

// State implements driver.Driver.
func (d *Driver) State(ctx context.Context, m driver.Machine) (driver.State, error) {
	if m.Dir == "" {
		return "", errors.New("machine: no dir")
	}
	c, err := d.connect()
	if err != nil {
		return "", err
	}
	dom, err := find(c, m)
	if err != nil {
		return "", err
	}
	switch dom.state {
	case stateRunning, stateBlocked, stateShutdown:
		return driver.StateRunning, nil
	case statePaused, statePMSusp:
		return driver.StatePaused, nil
	}
	if _, err := os.Stat(filepath.Join(m.Dir, media.DiskFile)); errors.Is(err, fs.ErrNotExist) {
		return driver.StateAbsent, nil
	} else if err != nil {
		return "", fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return driver.StateStopped, nil
}

// Stop implements driver.Driver: the ACPI power button, then, after
// Options.StopTimeout, destroy (libvirt's power cord).
func (d *Driver) Stop(ctx context.Context, m driver.Machine) error {
	c, err := d.connect()
	if err != nil {
		return err
	}
	dom, err := find(c, m)
	if err != nil || !active(dom.state) {
		return err
	}
	if dom.state != statePaused && c.DomainShutdownFlags(dom.Domain, golibvirt.DomainShutdownAcpiPowerBtn) == nil {
		wctx, cancel := context.WithTimeout(ctx, d.opts.StopTimeout)
		off := waitOff(wctx, c, dom.Domain)
		cancel()
		if off {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("machine %s: stop: %w", m.ID(), ctx.Err())
		}
	}
	return destroy(c, m, dom.Domain)
}

func waitOff(ctx context.Context, c *golibvirt.Libvirt, dom golibvirt.Domain) bool {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		if st, err := domainState(c, dom); err == nil && !active(st) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

func destroy(c *golibvirt.Libvirt, m driver.Machine, dom golibvirt.Domain) error {
	if err := c.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault); err != nil {
		if st, serr := domainState(c, dom); serr == nil && !active(st) {
			return nil // it went down on its own meanwhile
		}
		return fmt.Errorf("machine %s: libvirt: destroy: %w", m.ID(), err)
	}
	return nil
}

// Delete implements driver.Driver: the domain is destroyed and undefined,
// and the driver's files go.
func (d *Driver) Delete(ctx context.Context, m driver.Machine) error {
	if m.Dir == "" {
		return errors.New("machine: no dir")
	}
	c, err := d.connect()
	if err != nil {
		return err
	}
	dom, err := find(c, m)
	if err != nil {
		return err
	}
	if dom.found {
		if active(dom.state) {
			if err := destroy(c, m, dom.Domain); err != nil {
				return err
			}
		}
		flags := golibvirt.DomainUndefineManagedSave | golibvirt.DomainUndefineSnapshotsMetadata |
			golibvirt.DomainUndefineNvram | golibvirt.DomainUndefineCheckpointsMetadata
		if err := c.DomainUndefineFlags(dom.Domain, flags); err != nil && !golibvirt.IsNotFound(err) {
			return fmt.Errorf("machine %s: libvirt: undefine: %w", m.ID(), err)
		}
	}
	for _, f := range driverFiles {
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

// Reprovision implements driver.Reprovisioner: a fresh overlay on the
// base image, so the node boots as new and applies its configuration
// again. The domain must be off.
func (d *Driver) Reprovision(ctx context.Context, m driver.Machine) error {
	if err := d.check(m); err != nil {
		return err
	}
	return driver.Reprovision(ctx, d, m, media.DiskFile)
}
