package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubelab/kubelab/internal/components"
	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/fsutil"
	"github.com/kubelab/kubelab/internal/hostnet"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/progress"
	"github.com/kubelab/kubelab/internal/render/ignition"
	"github.com/kubelab/kubelab/internal/render/overlay"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/verify"
	"github.com/kubelab/kubelab/internal/versions"
)

// Env is what the lifecycle commands work with: the validated spec, its
// plan, the lab directory and a hypervisor driver.
type Env struct {
	Layout   Layout
	Lab      *spec.Lab
	Plan     *plan.Plan
	Versions versions.Set
	Driver   driver.Driver
	// Out receives free text (hints, an image build's steps) when
	// Progress is nil.
	Out io.Writer
	// Progress receives the status of each node or cluster a phase waits
	// for (boot stages, the last answer of a readiness check); nil drops
	// it.
	Progress *progress.Reporter
	// Clusters limits the command to these clusters; empty means all.
	Clusters []string
	// MergeKubeconfig adds a context per cluster to the user's kubeconfig.
	MergeKubeconfig bool
	// Timeouts are scaled to the accelerator; zero values get defaults.
	Timeouts Timeouts
	// BootTogether starts every node at once; by default the control
	// plane and etcd nodes boot first and the workers after them.
	BootTogether bool
	// NoTemplates makes every new node boot instead of resuming a node
	// template (see template.go).
	NoTemplates bool
	// Exe is the kubelab binary, run in the background as the lab's
	// config server (network.configServer).
	Exe string

	compatOnce sync.Once
	compat     string
	compatErr  error

	// The config server's tokens, read (and made) once: every node of
	// the plan has one.
	tokensOnce sync.Once
	tokens     map[string]string
	tokensErr  error

	// rendered holds each node's configuration from the last render
	// phase, by node name; boot brings nodes that run already up to its
	// network.
	rendered map[string]nodeconfig.Node
}

// Timeouts bound each wait of `up`. Defaults are for software emulation
// (TCG), where a node boots in about a minute and the API server starts
// about 16x slower than on hardware; with KVM they are divided by four.
type Timeouts struct {
	Boot, Etcd, APIServer, Nodes, Addons time.Duration
}

func (e *Env) timeouts(ctx context.Context) Timeouts {
	t := e.Timeouts
	def := Timeouts{Boot: 10 * time.Minute, Etcd: 5 * time.Minute, APIServer: apiServerTimeout(e.clusters()), Nodes: 10 * time.Minute, Addons: 10 * time.Minute}
	if a, ok := e.Driver.(driver.Accelerated); ok {
		if acc, err := a.Accelerator(ctx); err == nil && acc == "kvm" {
			def = Timeouts{Boot: def.Boot / 4, Etcd: def.Etcd / 4, APIServer: def.APIServer / 4, Nodes: def.Nodes / 4, Addons: def.Addons / 4}
		}
	}
	if t.Boot == 0 {
		t.Boot = def.Boot
	}
	if t.Etcd == 0 {
		t.Etcd = def.Etcd
	}
	if t.APIServer == 0 {
		t.APIServer = def.APIServer
	}
	if t.Nodes == 0 {
		t.Nodes = def.Nodes
	}
	if t.Addons == 0 {
		t.Addons = def.Addons
	}
	return t
}

// apiServerTimeout is the default wait for /readyz under emulation: 10
// minutes, and 5 more per further control plane of the largest cluster.
// Every API server starts at once and they share the host's cores and one
// etcd: three 1-vCPU control planes and a worker on two cores took 7m23s
// (2026-12-03), one alone about 1.5 min.
func apiServerTimeout(cls []plan.Cluster) time.Duration {
	most := 1
	for _, c := range cls {
		most = max(most, len(c.NodesWithRole(spec.RoleControlPlane)))
	}
	return 10*time.Minute + time.Duration(most-1)*5*time.Minute
}

// out is where free text goes: through the progress reporter when there
// is one, so it neither breaks its live lines nor lands in JSON output.
func (e *Env) out() io.Writer {
	if e.Progress != nil {
		return e.Progress.Writer()
	}
	if e.Out == nil {
		return io.Discard
	}
	return e.Out
}

// waiting is the status of a subject whose wait has not succeeded yet.
func waiting(lastSeen string) string { return "waiting, last seen: " + lastSeen }

// clusters is the plan's clusters the command works on.
func (e *Env) clusters() []plan.Cluster {
	var out []plan.Cluster
	for _, c := range e.Plan.Clusters {
		if selected(e.Clusters, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// Machine is the driver's view of a node: its disk on the node's image,
// direct kernel boot, its tap, and its configuration medium.
func (e *Env) Machine(c plan.Cluster, n plan.Node) (driver.Machine, error) {
	if e.Plan.Network.ConfigServer && n.Provisioning == spec.ProvisionIgnition {
		// Its kernel command line carries its token.
		if _, err := e.serveTokens(); err != nil {
			return driver.Machine{}, err
		}
	}
	m, _ := e.machine(c, n)
	return m, nil
}

// serveTokens is ServeTokens, once per Env.
func (e *Env) serveTokens() (map[string]string, error) {
	e.tokensOnce.Do(func() { e.tokens, e.tokensErr = ServeTokens(e.Layout, e.Plan) })
	return e.tokens, e.tokensErr
}

// machine is Machine, plus the template the node would start from (nil
// when it cannot start from one); m.Template is set once that is made.
func (e *Env) machine(c plan.Cluster, n plan.Node) (m driver.Machine, tmpl *driver.Machine) {
	imgDir := filepath.Join(e.Layout.Images(), n.Image)
	m = driver.Machine{
		Lab:       e.Lab.Name,
		Name:      n.Name,
		Dir:       e.Layout.Node(c.Name, n.Name),
		CPUs:      n.CPUs,
		MemoryMiB: n.MemoryMiB,
		DiskGiB:   n.DiskGiB,
		BaseImage: filepath.Join(imgDir, image.DiskFile),
		MAC:       n.MAC,
		Tap:       hostnet.TapName(e.Plan.Network.Bridge, n, e.Plan.Network),
		Bridge:    e.Plan.Network.Bridge,
		Netns:     e.Plan.Network.Namespace,
	}
	kernel := e.Layout.ImageKernel(n.Image)
	// Ignition by URL: kubelab's image booted directly fetches its config
	// from the config server (other images read what the hypervisor hands
	// them).
	ignitionByURL := false
	if manifest, err := image.ReadManifest(imgDir); err == nil {
		if _, err := os.Stat(kernel); err == nil {
			m.Kernel = kernel
			m.Initrd = filepath.Join(imgDir, image.InitrdFile)
			m.Cmdline = manifest.KernelCmdline
			if n.Provisioning != spec.ProvisionCloudInit && manifest.KernelCmdlineNoCloudInit != "" {
				m.Cmdline += " " + manifest.KernelCmdlineNoCloudInit
			}
			if n.Provisioning == spec.ProvisionIgnition && slices.Contains(manifest.Provisioning, image.ProvisionIgnition) {
				m.Cmdline += " " + e.ignitionCmdline(c, n)
				ignitionByURL = e.Plan.Network.ConfigServer
			}
		}
		if t, ok := e.templateMachine(m, n, manifest); ok {
			tmpl = &t
			if e.Driver.(driver.Templater).HasTemplate(t) {
				m.Template = t.Dir
			}
		}
	}
	switch n.Provisioning {
	case spec.ProvisionOverlay:
		m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: filepath.Join(m.Dir, overlay.FileName)}
	case spec.ProvisionCloudInit:
		m.Config = driver.Config{Kind: driver.ConfigCloudInit, Path: filepath.Join(m.Dir, CloudInitDir)}
	case spec.ProvisionIgnition:
		// Fetched from the config server by URL: the hypervisor hands
		// the guest nothing.
		if !ignitionByURL {
			m.Config = driver.Config{Kind: driver.ConfigIgnition, Path: filepath.Join(m.Dir, ignition.FileName)}
		}
	}
	return m, tmpl
}

// ignitionCmdline is what kubelab's image needs on its kernel command line
// to run Ignition at a first boot (see the image's ignition-initramfs):
// the platform, and with the config server the node's config URL and how
// the initramfs gets its address (DHCP, or the planned one statically).
// Without the config server the hypervisor hands the config over fw_cfg.
func (e *Env) ignitionCmdline(c plan.Cluster, n plan.Node) string {
	nw := e.Plan.Network
	if !nw.ConfigServer {
		return "ignition.platform.id=qemu"
	}
	tokens, _ := e.serveTokens() // Machine reports the error
	url := fmt.Sprintf("http://%s/%s/%s/%s/%s", netip.AddrPortFrom(nw.Gateway, uint16(nw.ConfigServerPort)), c.Name, n.Name, tokens[c.Name+"/"+n.Name], IgnitionConfigName)
	// The device named: initramfs-tools then runs ipconfig on it alone.
	ip := "ip=:::::eth0:dhcp"
	if !nw.DHCP {
		mask := net.CIDRMask(nw.CIDR.Bits(), 32)
		ip = fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", n.Address, nw.Gateway, net.IP(mask), n.Name)
	}
	return "ignition.platform.id=metal ignition.config.url=" + url + " " + ip
}

// UpPhases are the ordered phases of `kubelab up`. Each converges: run on a
// lab in any state (nothing, partial, stopped, crashed) they bring it to
// Ready without duplicating anything.
func (e *Env) UpPhases(ctx context.Context) []Phase {
	// Asked when used: the KVM probe boots the image's kernel, which the
	// image phase may only now have put in place.
	t := func() Timeouts { return e.timeouts(ctx) }
	cls := e.clusters()
	// The workers the boot phase leaves to the workers phase.
	var deferred []plan.Cluster
	return []Phase{
		{Name: "render", Describe: func() string { return "write PKI, ssh keys and node configurations into " + e.Layout.Dir },
			Run: func(ctx context.Context) error { return e.render() }},
		{Name: "image", Describe: func() string {
			return "make sure each node's image is in " + e.Layout.Images() + " (build kubelab's from cached components)"
		},
			Run: e.ensureImages},
		{Name: "preflight", Describe: func() string {
			return fmt.Sprintf("check, before the host is touched, that %s has room for the new nodes (%d MiB each) and the hypervisor can run them", e.Layout.Dir, nodeRoomMiB)
		},
			Run: func(ctx context.Context) error { return e.preflight(ctx, cls) }},
		{Name: "template", Describe: func() string {
			return "boot the image once per node shape and save it waiting for its configuration, unless saved before (new nodes resume it instead of booting)"
		},
			Run: func(ctx context.Context) error { return e.makeTemplates(ctx, cls) }},
		{Name: "network", Describe: func() string { return e.describeNetwork() },
			Run: func(ctx context.Context) error {
				_, err := hostnet.Apply(ctx, hostnet.FromPlan(e.Plan, e.Layout.HostNet()))
				return err
			}},
		{Name: "serve", Describe: func() string {
			if !e.Plan.Network.ConfigServer {
				return "no config server (network.configServer is off)"
			}
			return fmt.Sprintf("start the config server on http://%s:%d unless it runs (pid file %s)", e.Plan.Network.Gateway, e.Plan.Network.ConfigServerPort, e.Layout.ServePidFile())
		},
			Run: e.startServe},
		{Name: "disks", Describe: func() string { return "create a qcow2 overlay disk and config medium per node" },
			Run: func(ctx context.Context) error { return e.eachNode(ctx, cls, e.Driver.Create) }},
		{Name: "boot", Describe: func() string {
			if e.BootTogether {
				return fmt.Sprintf("start every node and wait for %q on its console (up to %s)", versions.ReadyMarker, t().Boot)
			}
			return fmt.Sprintf("start the control plane and etcd nodes (every node if none has to boot) and wait for %q on their consoles (up to %s)", versions.ReadyMarker, t().Boot)
		},
			Run: func(ctx context.Context) error {
				var now []plan.Cluster
				now, deferred = e.bootOrder(ctx, cls)
				return e.boot(ctx, now, t().Boot)
			}},
		{Name: "etcd", Describe: func() string {
			return fmt.Sprintf("wait for /health on every etcd member over mTLS (up to %s)", t().Etcd)
		},
			Run: func(ctx context.Context) error { return e.waitEtcd(ctx, cls, t().Etcd) }},
		{Name: "apiserver", Describe: func() string { return fmt.Sprintf("wait for the API server's /readyz (up to %s)", t().APIServer) },
			Run: func(ctx context.Context) error { return e.waitAPI(ctx, cls, t().APIServer) }},
		{Name: "addons", Describe: func() string { return "apply RBAC (as super-admin) and CoreDNS (as admin)" },
			Run: func(ctx context.Context) error { return e.applyAddons(ctx, cls, t().Addons) }},
		{Name: "workers", Describe: func() string {
			return fmt.Sprintf("start the workers the boot phase left for now and wait for %q on their consoles (up to %s)", versions.ReadyMarker, t().Boot)
		},
			Run: func(ctx context.Context) error { return e.boot(ctx, deferred, t().Boot) }},
		{Name: "nodes", Describe: func() string { return fmt.Sprintf("wait until every worker is Ready (up to %s)", t().Nodes) },
			Run: func(ctx context.Context) error { return e.waitNodes(ctx, cls, t().Nodes) }},
		{Name: "dns", Describe: func() string { return fmt.Sprintf("wait until CoreDNS is available (up to %s)", t().Addons) },
			Run: func(ctx context.Context) error { return e.waitDNS(ctx, cls, t().Addons) }},
		{Name: "kubeconfig", Describe: func() string { return "write each cluster's kubeconfig and merge its context into the user's" },
			Run: func(ctx context.Context) error { return e.writeKubeconfigs(cls) }},
	}
}

func (e *Env) render() error {
	res, err := Render(RenderInput{Layout: e.Layout, Lab: e.Lab, Plan: e.Plan, Versions: e.Versions, Clusters: e.Clusters})
	if err != nil {
		return err
	}
	e.rendered = map[string]nodeconfig.Node{}
	for _, rn := range res.Nodes {
		e.rendered[rn.Node] = rn.Config
	}
	return nil
}

func (e *Env) describeNetwork() string {
	n := e.Plan.Network
	where := "in the current network namespace"
	if n.Namespace != "" {
		where = "in network namespace " + n.Namespace + " (veth to the host)"
	}
	return fmt.Sprintf("bridge %s with %s, one tap per node, NAT and %d port forwards, %s", n.Bridge, n.Gateway, len(e.Plan.Forwards), where)
}

// ensureImages makes sure every image a node uses is in the lab. kubelab's
// own image is built from the cached components when missing; foreign
// images must have been imported.
func (e *Env) ensureImages(ctx context.Context) error {
	needed := map[string]bool{}
	for _, c := range e.clusters() {
		for _, n := range c.Nodes {
			needed[n.Image] = true
		}
	}
	for name := range needed {
		if _, err := image.ReadManifest(filepath.Join(e.Layout.Images(), name)); err == nil {
			continue
		}
		if name != spec.DefaultImage {
			return fmt.Errorf("image %q is not in %s; import it with `kubelab image import`", name, e.Layout.Images())
		}
		comp, err := components.Lookup(ctx, components.Options{Versions: e.Versions})
		if err != nil {
			return fmt.Errorf("image %q is missing and the components to build it are not cached (run `kubelab components build`): %w", name, err)
		}
		loaded, err := image.LoadComponents(comp.Dir)
		if err != nil {
			return err
		}
		cacheDir, err := image.DefaultCacheDir()
		if err != nil {
			return err
		}
		built, err := image.Build(ctx, image.BuildOptions{Components: loaded, CacheDir: cacheDir, Progress: e.out()})
		if err != nil {
			return fmt.Errorf("build image %q: %w", name, err)
		}
		if _, err := image.Install(built.Dir, e.Layout.Dir, name); err != nil {
			return err
		}
	}
	return nil
}

// eachNode runs fn for every node of cls in parallel and joins the errors.
func (e *Env) eachNode(ctx context.Context, cls []plan.Cluster, fn func(context.Context, driver.Machine) error) error {
	var g errgroup.Group
	var mu sync.Mutex
	var errs []error
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, err := e.Machine(c, n)
			if err != nil {
				return err
			}
			g.Go(func() error {
				if err := fn(ctx, m); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
					mu.Unlock()
				}
				return nil
			})
		}
	}
	g.Wait()
	return errors.Join(errs...)
}

// boot starts every node of cls that is not running and waits for its
// readiness marker. A node already running is only checked for having
// booted. Each node's stage (starting, kernel, systemd, ready) is read from
// its console while waiting and reported as its status.
func (e *Env) boot(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return e.eachNode(ctx, cls, e.bootNode)
}

// bootOrder splits up's nodes into those to boot now and the workers to
// boot once the API server is ready and the add-ons are applied. Workers
// wait when some of them have to boot (not only resume), there are control
// plane or etcd nodes, and --boot-together was not given. Measured on two
// emulated cores: a worker booting while the control plane starts takes
// CPU the API server's start needs (each emulated VM costs 20-45 % of a
// core even idle), and its kubelet can do nothing before the API answers;
// the API server's post-start hooks then time out and it starts over.
func (e *Env) bootOrder(ctx context.Context, cls []plan.Cluster) (now, later []plan.Cluster) {
	first, rest := splitByRole(cls)
	if e.BootTogether || len(first) == 0 || len(rest) == 0 || !e.anyNeedsBoot(ctx, rest) {
		return cls, nil
	}
	return first, rest
}

// anyNeedsBoot reports whether a node of cls would boot a kernel: one that
// runs or resumes from a saved state costs the others nothing to wait for.
func (e *Env) anyNeedsBoot(ctx context.Context, cls []plan.Cluster) bool {
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, err := e.Machine(c, n)
			if err != nil {
				return true
			}
			st, err := e.Driver.State(ctx, m)
			if err != nil || (st != driver.StateRunning && st != driver.StateSuspended) {
				return true
			}
		}
	}
	return false
}

// splitByRole splits clusters' nodes into those running etcd or the
// control plane and the others, keeping each cluster's name.
func splitByRole(cls []plan.Cluster) (first, rest []plan.Cluster) {
	for _, c := range cls {
		f, r := c, c
		f.Nodes, r.Nodes = nil, nil
		for _, n := range c.Nodes {
			if n.HasRole(spec.RoleControlPlane) || n.HasRole(spec.RoleEtcd) {
				f.Nodes = append(f.Nodes, n)
			} else {
				r.Nodes = append(r.Nodes, n)
			}
		}
		if len(f.Nodes) > 0 {
			first = append(first, f)
		}
		if len(r.Nodes) > 0 {
			rest = append(rest, r)
		}
	}
	return first, rest
}

// bootNode starts one node unless it runs and waits for its readiness
// marker; a suspended node is resumed and its clock stepped instead.
func (e *Env) bootNode(ctx context.Context, m driver.Machine) error {
	console := e.Driver.ConsolePath(m)
	state, err := e.Driver.State(ctx, m)
	if err != nil {
		e.Progress.Final(m.Name, "failed: "+err.Error())
		return err
	}
	if state == driver.StateSuspended {
		// Its memory comes back: no boot, no marker; only the clock,
		// which stood still while it was saved, must be stepped.
		e.Progress.Status(m.Name, "resuming from its saved state")
		if err := e.Driver.Start(ctx, m); err != nil {
			e.Progress.Final(m.Name, "failed to resume")
			return fmt.Errorf("resume: %w", err)
		}
		if _, n, ok := e.Plan.Node(m.Name); ok {
			e.Progress.Status(m.Name, "resumed, stepping its clock")
			if err := e.stepClock(ctx, n); err != nil {
				e.Progress.Final(m.Name, "clock not stepped")
				return fmt.Errorf("%w\n%s", err, consoleReport(console))
			}
		}
		e.Progress.Final(m.Name, "resumed")
		return nil
	}
	from := int64(0)
	if state != driver.StateRunning {
		e.Progress.Status(m.Name, driver.StageStarting)
		from = driver.ConsoleSize(console)
		if err := e.Driver.Start(ctx, m); err != nil {
			e.Progress.Final(m.Name, "failed to start")
			return fmt.Errorf("start: %w\n%s", err, consoleReport(console))
		}
	} else {
		e.Progress.Status(m.Name, "running, reading its console")
	}
	wasRunning := state == driver.StateRunning
	// A node that was already running has printed its marker in the
	// current boot; from=0 finds it (or a later one) in the log.
	alive := func() bool {
		s, err := e.Driver.State(context.Background(), m)
		return err == nil && s == driver.StateRunning
	}
	marker := versions.ReadyMarker + " " + m.Name
	stages := driver.NewStageScanner(marker)
	observe := func(chunk []byte) {
		if stage, changed := stages.Feed(chunk); changed && stage != driver.StageReady {
			e.Progress.Status(m.Name, stage)
		}
	}
	if err := driver.WaitConsoleWith(ctx, console, from, marker, driver.WaitOptions{Alive: alive, Observe: observe}); err != nil {
		e.Progress.Final(m.Name, "failed during stage "+stages.Stage())
		return fmt.Errorf("did not finish booting: %w\n%s", err, consoleReport(console))
	}
	c, n, _ := e.Plan.Node(m.Name)
	if cfg, ok := e.rendered[m.Name]; ok && (wasRunning || n.Provisioning != spec.ProvisionOverlay) {
		// It was provisioned with the lab as it was then; nodes may
		// have come or gone since.
		e.Progress.Status(m.Name, "running, bringing its routes and hosts up to date")
		changes, err := e.syncNetwork(ctx, c, n, cfg)
		if err != nil {
			e.Progress.Final(m.Name, "failed to update its network")
			return err
		}
		if len(changes) > 0 {
			e.Progress.Final(m.Name, "ready; "+strings.Join(changes, ", "))
			return nil
		}
	}
	e.Progress.Final(m.Name, driver.StageReady)
	return nil
}

func consoleReport(path string) string {
	return "--- last lines of " + path + " ---\n" + ConsoleTail(path, 30)
}

func (e *Env) consoleOf(c plan.Cluster, n plan.Node) string {
	m, _ := e.Machine(c, n)
	return consoleReport(e.Driver.ConsolePath(m))
}

func (e *Env) waitEtcd(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var g errgroup.Group
	for _, c := range cls {
		opts, err := pkiOptions(e.Lab, c)
		if err != nil {
			return err
		}
		creds, _, err := pki.Ensure(e.Layout.Dir, e.Lab.Name, c, e.Plan.Network, opts)
		if err != nil {
			return err
		}
		ca, err := creds.CACert(pki.EtcdCA)
		if err != nil {
			return err
		}
		cert, key, err := creds.PEM(pki.EtcdAPIServerClient)
		if err != nil {
			return err
		}
		for _, n := range c.NodesWithRole(spec.RoleEtcd) {
			g.Go(func() error {
				endpoint := "https://" + n.Address.String() + ":2379"
				e.Progress.Status(n.Name, "waiting for "+endpoint)
				if err := poll(ctx, 2*time.Second, func(ctx context.Context) error {
					err := etcdHealthy(ctx, endpoint, ca, cert, key)
					if err != nil {
						e.Progress.Status(n.Name, waiting(err.Error()))
					}
					return err
				}); err != nil {
					e.Progress.Final(n.Name, "not healthy")
					return fmt.Errorf("etcd member %s (%s) not healthy: %w\n%s", n.Name, endpoint, err, e.consoleOf(c, n))
				}
				e.Progress.Final(n.Name, "healthy")
				return nil
			})
		}
	}
	return g.Wait()
}

// pkiOptions: the host reaches the lab network directly (bridge, or veth
// route to the lab namespace), so the admin kubeconfig points at the first
// control plane itself rather than at a port forward. Lifetimes come
// from lab.yaml.
func pkiOptions(l *spec.Lab, c plan.Cluster) (pki.Options, error) {
	ca, leaf, err := l.Certificates.Validities()
	if err != nil {
		return pki.Options{}, err
	}
	return pki.Options{AdminServer: "https://" + c.APIServer.String(), CAValidity: ca, LeafValidity: leaf}, nil
}

// restConfig loads a kubeconfig from the cluster's PKI (admin or super-admin).
func (e *Env) restConfig(c plan.Cluster, name string) (*rest.Config, error) {
	data, err := os.ReadFile(pki.KubeconfigPath(pki.Dir(e.Layout.Dir, c.Name), name))
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w (run kubelab render)", c.Name, err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %s kubeconfig: %w", c.Name, name, err)
	}
	cfg.Proxy = nil // lab traffic never goes through a proxy
	return cfg, nil
}

func (e *Env) forEachCluster(ctx context.Context, cls []plan.Cluster, timeout time.Duration, fn func(context.Context, plan.Cluster) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var g errgroup.Group
	for _, c := range cls {
		g.Go(func() error {
			if err := fn(ctx, c); err != nil {
				return fmt.Errorf("cluster %s: %w", c.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

func (e *Env) waitAPI(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	return e.forEachCluster(ctx, cls, timeout, func(ctx context.Context, c plan.Cluster) error {
		cfg, err := e.restConfig(c, pki.Admin)
		if err != nil {
			return err
		}
		e.Progress.Status(c.Name, "waiting for "+cfg.Host)
		observe := verify.Observe(func(_, state string) {
			if state != "ready" {
				e.Progress.Status(c.Name, waiting(state))
			}
		})
		if err := verify.WaitAPIReady(ctx, cfg, observe); err != nil {
			e.Progress.Final(c.Name, "not ready")
			cp := c.NodesWithRole(spec.RoleControlPlane)[0]
			return fmt.Errorf("%w\n%s", err, e.consoleOf(c, cp))
		}
		e.Progress.Final(c.Name, "ready")
		return nil
	})
}

// applyAddons applies the RBAC add-on with the super-admin identity (the
// admin identity gets its rights from it) and the rest as admin.
func (e *Env) applyAddons(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	return e.forEachCluster(ctx, cls, timeout, func(ctx context.Context, c plan.Cluster) error {
		manifests, err := nodeconfig.Addons(e.Plan, c, e.Versions)
		if err != nil {
			return err
		}
		super, err := e.restConfig(c, pki.SuperAdmin)
		if err != nil {
			return err
		}
		admin, err := e.restConfig(c, pki.Admin)
		if err != nil {
			return err
		}
		for i, m := range manifests {
			cfg := admin
			if i == 0 {
				cfg = super
			}
			e.Progress.Status(c.Name, "applying "+m.Name)
			if err := poll(ctx, 3*time.Second, func(ctx context.Context) error {
				_, err := verify.Apply(ctx, cfg, []nodeconfig.Manifest{m})
				if err != nil {
					e.Progress.Status(c.Name, "applying "+m.Name+", last seen: "+err.Error())
				}
				return err
			}); err != nil {
				e.Progress.Final(c.Name, "failed to apply "+m.Name)
				return fmt.Errorf("apply add-on %s: %w", m.Name, err)
			}
		}
		e.Progress.Final(c.Name, fmt.Sprintf("applied %d add-ons", len(manifests)))
		return nil
	})
}

func (e *Env) clientset(c plan.Cluster) (*kubernetes.Clientset, error) {
	cfg, err := e.restConfig(c, pki.Admin)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (e *Env) waitNodes(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	return e.forEachCluster(ctx, cls, timeout, func(ctx context.Context, c plan.Cluster) error {
		cs, err := e.clientset(c)
		if err != nil {
			return err
		}
		var names []string
		for _, n := range c.NodesWithRole(spec.RoleWorker) {
			names = append(names, n.Name)
		}
		for _, n := range names {
			e.Progress.Status(n, "waiting to be Ready")
		}
		observe := verify.Observe(func(node, state string) {
			if state == "ready" {
				e.Progress.Final(node, "Ready")
			} else {
				e.Progress.Status(node, waiting(state))
			}
		})
		if err := verify.WaitNodesReady(ctx, cs, names, observe); err != nil {
			var tails []string
			for _, n := range c.NodesWithRole(spec.RoleWorker) {
				tails = append(tails, e.consoleOf(c, n))
			}
			return fmt.Errorf("%w\n%s", err, strings.Join(tails, "\n"))
		}
		return nil
	})
}

func (e *Env) waitDNS(ctx context.Context, cls []plan.Cluster, timeout time.Duration) error {
	return e.forEachCluster(ctx, cls, timeout, func(ctx context.Context, c plan.Cluster) error {
		if len(c.NodesWithRole(spec.RoleWorker)) == 0 {
			return nil // nowhere to run CoreDNS
		}
		cs, err := e.clientset(c)
		if err != nil {
			return err
		}
		e.Progress.Status(c.Name, "waiting for CoreDNS")
		observe := verify.Observe(func(_, state string) {
			if state != "available" {
				e.Progress.Status(c.Name, waiting(state))
			}
		})
		if err := verify.WaitDeploymentAvailable(ctx, cs, "kube-system", "coredns", observe); err != nil {
			e.Progress.Final(c.Name, "CoreDNS not available")
			return err
		}
		e.Progress.Final(c.Name, "CoreDNS available")
		return nil
	})
}

// writeKubeconfigs writes clusters/<c>/kubeconfig (the admin identity) and,
// when asked, merges its context into the user's kubeconfig.
func (e *Env) writeKubeconfigs(cls []plan.Cluster) error {
	for _, c := range cls {
		data, err := os.ReadFile(pki.KubeconfigPath(pki.Dir(e.Layout.Dir, c.Name), pki.Admin))
		if err != nil {
			return err
		}
		path := e.Layout.Kubeconfig(c.Name)
		// Replaced atomically: certs commands rewrite it while kubectl runs.
		if err := fsutil.WriteFile(path, data, 0o600, 0o755); err != nil {
			return err
		}
		fmt.Fprintf(e.out(), "    kubectl --kubeconfig %s get nodes\n", path)
		if !e.MergeKubeconfig {
			// A context merged by an earlier up gets the new credentials.
			user, err := UserKubeconfig()
			if err != nil {
				return err
			}
			if name, err := UpdateContext(user, data); err != nil {
				return err
			} else if name != "" {
				fmt.Fprintf(e.out(), "    context %s in %s updated\n", name, user)
			}
			continue
		}
		if e.MergeKubeconfig {
			user, err := UserKubeconfig()
			if err != nil {
				return err
			}
			name, err := MergeContext(user, data)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.out(), "    kubectl --context %s get nodes   (context added to %s)\n", name, user)
		}
	}
	return nil
}
