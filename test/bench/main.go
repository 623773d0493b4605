// Command bench measures kubelab against the floor of its own design, in
// one run on one machine: the default lab's VMs booted bare from kubelab's
// image (nothing of Kubernetes) to the readiness marker, then `kubelab up`
// to Ready with DNS, stop/start, suspend/start, snapshot save/restore and
// destroy, each repeated -n times; plus idle RSS and host CPU per node,
// disk bytes per node and the time to create a node disk. It writes
// report.json and report.md.
//
// It must run inside a network namespace made for it (hack/bench.sh makes
// one): the lab's bridge, taps and VMs are created in the namespace it runs
// in.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/qemu"
	"github.com/kubelab/kubelab/internal/hostnet"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/lab"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

type options struct {
	runs    int
	bin     string
	dir     string
	out     string
	idle    time.Duration
	skipSet map[string]bool
	upFlags []string
}

func main() {
	var o options
	var skip string
	flag.IntVar(&o.runs, "n", 3, "repetitions of each step")
	flag.StringVar(&o.bin, "kubelab", "bin/kubelab", "kubelab binary")
	flag.StringVar(&o.dir, "dir", "", "lab directory (default: a new temporary one)")
	flag.StringVar(&o.out, "out", "bench", "directory for report.json and report.md")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "how long an idle Ready cluster is sampled for RSS and CPU")
	flag.StringVar(&skip, "skip", "", "comma-separated steps to leave out (floor,stopstart,suspend,snapshot)")
	upFlags := flag.String("up-flags", "", "extra flags for up and start, e.g. --boot-together")
	flag.Parse()
	o.upFlags = strings.Fields(*upFlags)
	o.skipSet = map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s != "" {
			o.skipSet[s] = true
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// Report is report.json.
type Report struct {
	Date            string                          `json:"date"`
	Machine         string                          `json:"machine"`
	Accelerator     string                          `json:"accelerator"`
	Commit          string                          `json:"commit"`
	Runs            int                             `json:"runs"`
	UpFlags         []string                        `json:"upFlags,omitempty"`
	Samples         map[string][]float64            `json:"samples"`    // step -> seconds per run
	Phases          map[string]map[string][]float64 `json:"phases"`     // command -> phase -> seconds per run
	IdleRSSMiB      map[string][]float64            `json:"idleRSSMiB"` // node -> per run
	IdleCPUPct      map[string][]float64            `json:"idleCPUPercentOfOneCore"`
	DiskBytes       map[string][]float64            `json:"diskBytes"`
	SnapshotBytes   []float64                       `json:"snapshotBytes"`
	DiskCreateMs    []float64                       `json:"diskCreateMs"`
	DiskCreateBytes []float64                       `json:"diskCreateBytes"`
}

func (r *Report) add(step string, d time.Duration) {
	r.Samples[step] = append(r.Samples[step], d.Seconds())
	fmt.Printf("bench: %-22s %6.1fs\n", step, d.Seconds())
}

func run(o options) error {
	if o.dir == "" {
		d, err := os.MkdirTemp("", "kubelab-bench-")
		if err != nil {
			return err
		}
		o.dir = d
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = bin
	ctx := context.Background()
	r := &Report{Date: time.Now().UTC().Format(time.RFC3339), Runs: o.runs, Machine: machine(),
		Commit: gitCommit(), UpFlags: o.upFlags, Samples: map[string][]float64{}, Phases: map[string]map[string][]float64{},
		IdleRSSMiB: map[string][]float64{}, IdleCPUPct: map[string][]float64{}, DiskBytes: map[string][]float64{}}

	// The default lab, its image in place (built from cached components).
	if _, err := os.Stat(filepath.Join(o.dir, "lab.yaml")); err != nil {
		if err := o.kubelab("init"); err != nil {
			return err
		}
	}
	if err := o.kubelab("image", "build"); err != nil {
		return err
	}
	d := qemu.New(qemu.Options{})
	if r.Accelerator, err = d.Accelerator(ctx); err != nil {
		return err
	}

	if err := diskCreation(ctx, o, r); err != nil {
		return err
	}
	// The first up on an image makes the node template (one boot per node
	// shape, kept with the image); every later up resumes it. Measure that
	// once, apart from the runs.
	if made, _ := filepath.Glob(filepath.Join(o.dir, "images", "*", "templates", "*", "template.json")); len(made) == 0 && !o.noTemplate() {
		fmt.Println("bench: first up (makes the node template)")
		if err := o.timed(r, firstUp, "up", append([]string{"up", "--no-merge"}, o.upFlags...)...); err != nil {
			return err
		}
		if err := o.kubelab("destroy", "-q"); err != nil {
			return err
		}
	}
	for i := 0; i < o.runs; i++ {
		fmt.Printf("bench: run %d of %d\n", i+1, o.runs)
		if !o.skipSet["floor"] {
			t, err := bootFloor(ctx, o, d)
			if err != nil {
				return fmt.Errorf("boot floor: %w", err)
			}
			r.add("floor", t)
		}
		if err := o.timed(r, "up", "up", append([]string{"up", "--no-merge"}, o.upFlags...)...); err != nil {
			return err
		}
		if err := idle(o, d, r); err != nil {
			return err
		}
		if !o.skipSet["snapshot"] {
			if err := o.timed(r, "snapshot save", "snapshot-save", "snapshot", "save", "bench"); err != nil {
				return err
			}
			if b, err := dirBytes(filepath.Join(o.dir, "clusters", "k1", "snapshots", "bench")); err == nil {
				r.SnapshotBytes = append(r.SnapshotBytes, float64(b))
			}
			if err := o.timed(r, "snapshot restore", "snapshot-restore", "snapshot", "restore", "bench"); err != nil {
				return err
			}
			if err := o.kubelab("snapshot", "delete", "bench"); err != nil {
				return err
			}
		}
		if !o.skipSet["suspend"] {
			if err := o.timed(r, "stop --suspend", "", "stop", "--suspend"); err != nil {
				return err
			}
			if err := o.timed(r, "start (suspended)", "start", "start"); err != nil {
				return err
			}
		}
		if !o.skipSet["stopstart"] {
			if err := o.timed(r, "stop", "stop", "stop"); err != nil {
				return err
			}
			if err := o.timed(r, "start", "start", append([]string{"start"}, o.upFlags...)...); err != nil {
				return err
			}
		}
		if err := o.timed(r, "destroy", "", "destroy"); err != nil {
			return err
		}
	}
	return write(o, r)
}

// firstUp is the step of the up that makes the node template.
const firstUp = "up (first: makes the template)"

func (o options) noTemplate() bool {
	for _, f := range o.upFlags {
		if f == "--no-template" {
			return true
		}
	}
	return false
}

func (o options) kubelab(args ...string) error {
	cmd := exec.Command(o.bin, append([]string{"--dir", o.dir}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubelab %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// timed runs a kubelab command, records its wall time under step and, when
// timings names a timings file, its phases.
func (o options) timed(r *Report, step, timings string, args ...string) error {
	start := time.Now()
	if err := o.kubelab(append(args, "-q")...); err != nil {
		return err
	}
	r.add(step, time.Since(start))
	if timings == "" {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(o.dir, "timings-"+timings+".json"))
	if err != nil {
		return err
	}
	var doc struct {
		Phases []lab.Timing `json:"phases"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return err
	}
	if r.Phases[step] == nil {
		r.Phases[step] = map[string][]float64{}
	}
	for _, p := range doc.Phases {
		r.Phases[step][p.Phase] = append(r.Phases[step][p.Phase], p.Seconds)
	}
	return nil
}

func loadPlan(dir string) (*spec.Lab, *plan.Plan, error) {
	l, _, err := spec.Load(filepath.Join(dir, "lab.yaml"))
	if err != nil {
		return nil, nil, err
	}
	p, err := plan.New(l, dir)
	return l, p, err
}

// bootFloor boots every node of the lab at once from kubelab's image with
// no node configuration at all (nothing of Kubernetes starts), same sizes
// and network as `up`, and times the last readiness marker.
func bootFloor(ctx context.Context, o options, d *qemu.Driver) (time.Duration, error) {
	l, p, err := loadPlan(o.dir)
	if err != nil {
		return 0, err
	}
	env := &lab.Env{Layout: lab.Layout{Dir: o.dir}, Lab: l, Plan: p, Versions: versions.Default(), Driver: d, Out: io.Discard}
	floorDir, err := os.MkdirTemp("", "kubelab-floor-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(floorDir)
	net := hostnet.FromPlan(p, filepath.Join(floorDir, "hostnet"))
	if _, err := hostnet.Apply(ctx, net); err != nil {
		return 0, err
	}
	defer hostnet.Remove(context.Background(), net)
	var machines []driver.Machine
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			m, err := env.Machine(c, n)
			if err != nil {
				return 0, err
			}
			m.Lab, m.Dir = "floor", filepath.Join(floorDir, n.Name)
			// A boot, not a template's resume.
			m.Config, m.Template = driver.Config{}, ""
			if !strings.Contains(m.Cmdline, image.KernelCmdlineNoCloudInit) {
				m.Cmdline += " " + image.KernelCmdlineNoCloudInit
			}
			if err := d.Create(ctx, m); err != nil {
				return 0, err
			}
			machines = append(machines, m)
		}
	}
	defer func() {
		for _, m := range machines {
			_ = d.Delete(context.Background(), m)
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	start := time.Now()
	errs := make(chan error, len(machines))
	for _, m := range machines {
		go func() {
			if err := d.Start(wctx, m); err != nil {
				errs <- err
				return
			}
			errs <- driver.WaitConsole(wctx, d.ConsolePath(m), 0, versions.ReadyMarker, nil)
		}()
	}
	var all []error
	for range machines {
		all = append(all, <-errs)
	}
	took := time.Since(start)
	return took, errors.Join(all...)
}

// idle waits for the Ready cluster to settle, then samples each node's
// QEMU: resident memory, and CPU time over o.idle as a share of one core.
func idle(o options, d *qemu.Driver, r *Report) error {
	l, p, err := loadPlan(o.dir)
	if err != nil {
		return err
	}
	env := &lab.Env{Layout: lab.Layout{Dir: o.dir}, Lab: l, Plan: p, Versions: versions.Default(), Driver: d, Out: io.Discard}
	time.Sleep(30 * time.Second)
	type sample struct {
		name string
		pid  int
		cpu  float64
	}
	var ss []sample
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			m, err := env.Machine(c, n)
			if err != nil {
				return err
			}
			pid := d.PID(m)
			if pid == 0 {
				return fmt.Errorf("node %s does not run after up", n.Name)
			}
			ss = append(ss, sample{n.Name, pid, cpuSeconds(pid)})
			if b, err := allocatedBytes(filepath.Join(m.Dir, qemu.DiskFile)); err == nil {
				r.DiskBytes[n.Name] = append(r.DiskBytes[n.Name], float64(b))
			}
		}
	}
	start := time.Now()
	time.Sleep(o.idle)
	elapsed := time.Since(start).Seconds()
	for _, s := range ss {
		cpu := (cpuSeconds(s.pid) - s.cpu) / elapsed * 100
		r.IdleCPUPct[s.name] = append(r.IdleCPUPct[s.name], cpu)
		r.IdleRSSMiB[s.name] = append(r.IdleRSSMiB[s.name], float64(rssKiB(s.pid))/1024)
		fmt.Printf("bench: idle %-6s %5.1f%% of a core, %4.0f MiB RSS\n", s.name, cpu, float64(rssKiB(s.pid))/1024)
	}
	return nil
}

// diskCreation times the creation of a node disk (an overlay on the image)
// the way the driver makes it.
func diskCreation(ctx context.Context, o options, r *Report) error {
	l, p, err := loadPlan(o.dir)
	if err != nil {
		return err
	}
	d := qemu.New(qemu.Options{})
	env := &lab.Env{Layout: lab.Layout{Dir: o.dir}, Lab: l, Plan: p, Versions: versions.Default(), Driver: d, Out: io.Discard}
	tmp, err := os.MkdirTemp("", "kubelab-disk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	c := p.Clusters[0]
	for i := 0; i < 10; i++ {
		m, err := env.Machine(c, c.Nodes[0])
		if err != nil {
			return err
		}
		m.Dir, m.Config = filepath.Join(tmp, strconv.Itoa(i)), driver.Config{}
		start := time.Now()
		if err := d.Create(ctx, m); err != nil {
			return err
		}
		r.DiskCreateMs = append(r.DiskCreateMs, float64(time.Since(start).Microseconds())/1000)
		b, err := allocatedBytes(filepath.Join(m.Dir, qemu.DiskFile))
		if err != nil {
			return err
		}
		r.DiskCreateBytes = append(r.DiskCreateBytes, float64(b))
	}
	return nil
}

func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func rssKiB(pid int) int {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
	}
	return 0
}

func allocatedBytes(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512, nil
	}
	return st.Size(), nil
}

func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := allocatedBytes(p)
		total += b
		return err
	})
	return total, err
}

func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	mem := ""
	if syscall.Sysinfo(&si) == nil {
		mem = fmt.Sprintf(", %d GiB RAM", si.Totalram*uint64(si.Unit)>>30)
	}
	return fmt.Sprintf("%d cores (%s)%s", runtime.NumCPU(), cpu, mem)
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func stats(xs []float64) (min, median float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[0], s[len(s)/2]
	}
	return s[0], (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func write(o options, r *Report) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "report.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	md := markdown(r)
	fmt.Print(md)
	return os.WriteFile(filepath.Join(o.out, "report.md"), []byte(md), 0o644)
}

func markdown(r *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# kubelab benchmark\n\n%s, commit %s, %s, accelerator %s, %d run(s) of each step, up/start flags %q.\n\n",
		r.Date, r.Commit, r.Machine, r.Accelerator, r.Runs, strings.Join(r.UpFlags, " "))
	b.WriteString("| step | min | median |\n|---|---|---|\n")
	order := []string{"floor", firstUp, "up", "snapshot save", "snapshot restore", "stop --suspend", "start (suspended)", "stop", "start", "destroy"}
	for _, step := range order {
		if xs, ok := r.Samples[step]; ok {
			mn, md := stats(xs)
			fmt.Fprintf(&b, "| %s | %s | %s |\n", step, dur(mn), dur(md))
		}
	}
	_, upMed := stats(r.Samples["up"])
	_, floorMed := stats(r.Samples["floor"])
	upMin, _ := stats(r.Samples["up"])
	floorMin, _ := stats(r.Samples["floor"])
	if floorMed > 0 {
		fmt.Fprintf(&b, "\nup to Ready with DNS / boot floor: **%.2f** (medians), %.2f (minimums)\n", upMed/floorMed, upMin/floorMin)
	}
	for _, cmd := range []string{firstUp, "up", "snapshot restore", "start (suspended)", "start"} {
		phases := r.Phases[cmd]
		if len(phases) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\nPhases of `%s` (median):", cmd)
		var names []string
		for name := range phases {
			names = append(names, name)
		}
		sort.Slice(names, func(i, j int) bool { return phaseOrder(names[i]) < phaseOrder(names[j]) })
		for _, name := range names {
			_, md := stats(phases[name])
			fmt.Fprintf(&b, " %s %s,", name, dur(md))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n| node | idle RSS (median) | idle host CPU, % of one core (median) | disk bytes (median) |\n|---|---|---|---|\n")
	var nodes []string
	for n := range r.IdleRSSMiB {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		_, rss := stats(r.IdleRSSMiB[n])
		_, cpu := stats(r.IdleCPUPct[n])
		_, disk := stats(r.DiskBytes[n])
		fmt.Fprintf(&b, "| %s | %.0f MiB | %.1f %% | %.0f MiB |\n", n, rss, cpu, disk/(1<<20))
	}
	mn, md := stats(r.DiskCreateMs)
	_, bytes := stats(r.DiskCreateBytes)
	fmt.Fprintf(&b, "\nNode disk creation: min %.1f ms, median %.1f ms, %.0f KiB each.\n", mn, md, bytes/1024)
	if len(r.SnapshotBytes) > 0 {
		_, sb := stats(r.SnapshotBytes)
		fmt.Fprintf(&b, "Snapshot size (whole cluster): %.0f MiB.\n", sb/(1<<20))
	}
	return b.String()
}

func phaseOrder(name string) int {
	for i, p := range []string{"check", "render", "image", "preflight", "template", "network", "serve", "disks", "restore", "boot", "resume", "clock", "etcd", "apiserver", "addons", "workers", "nodes", "dns", "kubeconfig"} {
		if p == name {
			return i
		}
	}
	return 100
}

func dur(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d < time.Minute {
		return fmt.Sprintf("%.1f s", s)
	}
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}
