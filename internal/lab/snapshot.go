package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/hostnet"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
)

// SnapshotManifestFile describes a snapshot; it is written last, so a
// snapshot directory without it is an interrupted save.
const SnapshotManifestFile = "manifest.json"

// SnapshotManifest records what a snapshot belongs to and what it can be
// restored onto.
type SnapshotManifest struct {
	Name    string `json:"name"`
	Lab     string `json:"lab"`
	Cluster string `json:"cluster"`
	Created string `json:"created"`
	// Identity is the sha256 of the cluster's Kubernetes CA certificate:
	// a snapshot is never restored into another cluster's identity, even
	// one of the same name made again after a purge.
	Identity string `json:"identity"`
	Driver   string `json:"driver"`
	// Compatibility is the driver's StateCompatibility at save time.
	Compatibility string         `json:"compatibility"`
	Nodes         []SnapshotNode `json:"nodes"`
	// PausedSeconds is how long the cluster stood still for the save.
	PausedSeconds float64 `json:"pausedSeconds"`
}

// SnapshotNode is one node's part of a snapshot, with the shape the
// saved state needs again.
type SnapshotNode struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac"`
	Address   string   `json:"address"`
	CPUs      int      `json:"cpus"`
	MemoryMiB uint64   `json:"memoryMiB"`
	Image     string   `json:"image"` // the image's inputs hash: the disk layer's backing file
	Files     []string `json:"files"`
}

// SnapshotInfo is one row of `kubelab snapshot list`.
type SnapshotInfo struct {
	Cluster string `json:"cluster"`
	Name    string `json:"name"`
	Created string `json:"created"`
	Nodes   int    `json:"nodes"`
	Bytes   int64  `json:"bytes"`
}

var snapshotNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ValidSnapshotName checks a snapshot name: it becomes a directory name.
func ValidSnapshotName(name string) error {
	if !snapshotNameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("snapshot name %q is not valid: use 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// SnapshotCluster picks the cluster a snapshot command is about: the one
// named, or the lab's only one.
func (e *Env) SnapshotCluster(name string) (plan.Cluster, error) {
	if name != "" {
		c, ok := e.Plan.Cluster(name)
		if !ok {
			return plan.Cluster{}, fmt.Errorf("no cluster %q in lab.yaml", name)
		}
		return c, nil
	}
	if len(e.Plan.Clusters) != 1 {
		var names []string
		for _, c := range e.Plan.Clusters {
			names = append(names, c.Name)
		}
		return plan.Cluster{}, fmt.Errorf("the lab has clusters %s: name the cluster (kubelab snapshot save CLUSTER NAME)", strings.Join(names, ", "))
	}
	return e.Plan.Clusters[0], nil
}

func (e *Env) snapshotter() (driver.Snapshotter, error) {
	s, ok := e.Driver.(driver.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("the %s driver cannot save and restore machine state", e.Driver.Name())
	}
	return s, nil
}

// clusterIdentity is the sha256 of the cluster's Kubernetes CA certificate.
func (e *Env) clusterIdentity(c plan.Cluster) (string, error) {
	data, err := os.ReadFile(filepath.Join(pki.Dir(e.Layout.Dir, c.Name), pki.KubernetesCA+".crt"))
	if err != nil {
		return "", fmt.Errorf("cluster %s has no CA (was it rendered and brought up?): %w", c.Name, err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// imageID is the inputs hash of a node's image (its disk layer's backing).
func (e *Env) imageID(n plan.Node) string {
	m, err := image.ReadManifest(filepath.Join(e.Layout.Images(), n.Image))
	if err != nil {
		return ""
	}
	if m.InputsHash != "" {
		return m.InputsHash
	}
	return m.Artifacts[image.DiskFile]
}

// SnapshotSavePhases save the running cluster c as snapshot name: every
// node is paused before any is saved, so the saved states are of one
// moment; then all resume and their clocks are stepped.
func (e *Env) SnapshotSavePhases(c plan.Cluster, name string) ([]Phase, error) {
	if err := ValidSnapshotName(name); err != nil {
		return nil, err
	}
	snap, err := e.snapshotter()
	if err != nil {
		return nil, err
	}
	final := e.Layout.Snapshot(c.Name, name)
	tmp := filepath.Join(e.Layout.Snapshots(c.Name), "."+name+".partial")
	var manifest SnapshotManifest
	var paused time.Duration
	return []Phase{
		{Name: "check", Describe: func() string { return "check that every node of " + c.Name + " runs and the name is free" },
			Run: func(ctx context.Context) error {
				if err := e.SnapshotPrecheck(c, name, true); err != nil {
					return err
				}
				down, err := e.notRunning(ctx, c)
				if err != nil {
					return err
				}
				if len(down) > 0 {
					return fmt.Errorf("node %s: a snapshot is taken of a running cluster (kubelab up first)", strings.Join(down, ", "))
				}
				id, err := e.clusterIdentity(c)
				if err != nil {
					return err
				}
				compat, err := snap.StateCompatibility(ctx)
				if err != nil {
					return err
				}
				manifest = SnapshotManifest{Name: name, Lab: e.Lab.Name, Cluster: c.Name, Identity: id,
					Driver: e.Driver.Name(), Compatibility: compat}
				return nil
			}},
		{Name: "save", Describe: func() string {
			return "pause every node, save each one's memory, devices and disk layer into " + final + ", resume them"
		}, Run: func(ctx context.Context) error {
			if err := os.RemoveAll(tmp); err != nil {
				return err
			}
			if err := os.MkdirAll(tmp, 0o700); err != nil {
				return err
			}
			start := time.Now()
			files, err := e.saveCluster(ctx, snap, c, tmp)
			paused = time.Since(start)
			if err != nil {
				_ = os.RemoveAll(tmp)
				return err
			}
			manifest.Nodes = nil
			for _, n := range c.Nodes {
				manifest.Nodes = append(manifest.Nodes, SnapshotNode{Name: n.Name, MAC: n.MAC, Address: n.Address.String(),
					CPUs: n.CPUs, MemoryMiB: n.MemoryMiB, Image: e.imageID(n), Files: files[n.Name]})
			}
			return nil
		}},
		{Name: "clock", Describe: func() string { return "step every node's clock to the host's (it stood still while paused)" },
			Run: func(ctx context.Context) error { return e.stepClocks(ctx, c.Nodes) }},
		{Name: "manifest", Describe: func() string { return "write the snapshot's manifest and make it visible" },
			Run: func(ctx context.Context) error {
				manifest.Created = time.Now().UTC().Format(time.RFC3339)
				manifest.PausedSeconds = paused.Seconds()
				data, err := json.MarshalIndent(manifest, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(tmp, SnapshotManifestFile), append(data, '\n'), 0o600); err != nil {
					return err
				}
				return os.Rename(tmp, final)
			}},
	}, nil
}

// saveCluster pauses all nodes, saves each, and resumes all whatever
// happened. It returns each node's files relative to dir.
func (e *Env) saveCluster(ctx context.Context, snap driver.Snapshotter, c plan.Cluster, dir string) (map[string][]string, error) {
	one := []plan.Cluster{c}
	pauseErr := e.eachNode(ctx, one, snap.Pause)
	// Resume with a context of its own: a cancelled save must not leave
	// the cluster paused.
	defer e.eachNode(context.WithoutCancel(ctx), one, snap.Resume)
	if pauseErr != nil {
		return nil, pauseErr
	}
	var mu sync.Mutex
	files := map[string][]string{}
	err := e.eachNode(ctx, one, func(ctx context.Context, m driver.Machine) error {
		nodeDir := filepath.Join(dir, m.Name)
		if err := os.Mkdir(nodeDir, 0o700); err != nil {
			return err
		}
		e.Progress.Status(m.Name, "saving memory, devices and disk layer")
		saved, err := snap.SaveState(ctx, m, nodeDir)
		if err != nil {
			e.Progress.Final(m.Name, "save failed")
			return err
		}
		e.Progress.Final(m.Name, "saved")
		var rel []string
		for _, f := range saved {
			rel = append(rel, filepath.Join(m.Name, f))
		}
		mu.Lock()
		files[m.Name] = rel
		mu.Unlock()
		return nil
	})
	return files, err
}

func (e *Env) stepClocks(ctx context.Context, nodes []plan.Node) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.Progress.Status(n.Name, "stepping the clock over ssh")
			if errs[i] = e.stepClock(ctx, n); errs[i] != nil {
				e.Progress.Final(n.Name, "clock not stepped")
				return
			}
			e.Progress.Final(n.Name, "clock stepped")
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SnapshotPrecheck refuses a snapshot name that is not valid, that exists
// when a new snapshot is to be saved (forSave), or that does not exist
// otherwise. It reads only.
func (e *Env) SnapshotPrecheck(c plan.Cluster, name string, forSave bool) error {
	if err := ValidSnapshotName(name); err != nil {
		return err
	}
	if !forSave {
		_, err := e.ReadSnapshot(c, name)
		return err
	}
	if _, err := os.Stat(e.Layout.Snapshot(c.Name, name)); err == nil {
		return fmt.Errorf("snapshot %q of cluster %s exists already: delete it first (kubelab snapshot delete %s %s) or pick another name", name, c.Name, c.Name, name)
	}
	return nil
}

// ReadSnapshot reads a snapshot's manifest; a missing snapshot is an
// error that says how to find the existing ones.
func (e *Env) ReadSnapshot(c plan.Cluster, name string) (SnapshotManifest, error) {
	var m SnapshotManifest
	if err := ValidSnapshotName(name); err != nil {
		return m, err
	}
	data, err := os.ReadFile(filepath.Join(e.Layout.Snapshot(c.Name, name), SnapshotManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("no snapshot %q of cluster %s (kubelab snapshot list shows what there is)", name, c.Name)
	} else if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("snapshot %q of cluster %s: manifest: %w", name, c.Name, err)
	}
	return m, nil
}

// checkRestorable refuses a snapshot that does not belong to this cluster
// as it is now, or that this hypervisor cannot load.
func (e *Env) checkRestorable(ctx context.Context, snap driver.Snapshotter, c plan.Cluster, m SnapshotManifest) error {
	if m.Lab != e.Lab.Name || m.Cluster != c.Name {
		return fmt.Errorf("snapshot %q was taken of cluster %s of lab %s, not of cluster %s of lab %s", m.Name, m.Cluster, m.Lab, c.Name, e.Lab.Name)
	}
	id, err := e.clusterIdentity(c)
	if err != nil {
		return err
	}
	if id != m.Identity {
		return fmt.Errorf("snapshot %q belongs to an earlier cluster %s with another CA (the PKI was made again since): it cannot be restored into this one", m.Name, c.Name)
	}
	if m.Driver != e.Driver.Name() {
		return fmt.Errorf("snapshot %q was saved by the %s driver, this lab uses %s", m.Name, m.Driver, e.Driver.Name())
	}
	compat, err := snap.StateCompatibility(ctx)
	if err != nil {
		return err
	}
	if compat != m.Compatibility {
		return fmt.Errorf("snapshot %q was saved under %q and cannot be loaded under %q: restore it with the same hypervisor version and accelerator", m.Name, m.Compatibility, compat)
	}
	byName := map[string]SnapshotNode{}
	for _, n := range m.Nodes {
		byName[n.Name] = n
	}
	if len(m.Nodes) != len(c.Nodes) {
		return fmt.Errorf("snapshot %q has %d nodes, cluster %s has %d now", m.Name, len(m.Nodes), c.Name, len(c.Nodes))
	}
	for _, n := range c.Nodes {
		s, ok := byName[n.Name]
		if !ok {
			return fmt.Errorf("snapshot %q has no node %s", m.Name, n.Name)
		}
		if s.MAC != n.MAC || s.Address != n.Address.String() || s.CPUs != n.CPUs || s.MemoryMiB != n.MemoryMiB {
			return fmt.Errorf("node %s changed since snapshot %q (saved: %s %s, %d cpus, %d MiB; now: %s %s, %d cpus, %d MiB)",
				n.Name, m.Name, s.Address, s.MAC, s.CPUs, s.MemoryMiB, n.Address, n.MAC, n.CPUs, n.MemoryMiB)
		}
		if id := e.imageID(n); id != s.Image {
			return fmt.Errorf("node %s: its image %q changed since snapshot %q (the saved disk layer sits on the old one)", n.Name, n.Image, m.Name)
		}
	}
	return nil
}

// SnapshotRestorePhases bring cluster c back to snapshot name: every node
// is replaced by its saved state, all resume together, clocks are stepped,
// and the API server and nodes must be Ready again.
func (e *Env) SnapshotRestorePhases(ctx context.Context, c plan.Cluster, name string) ([]Phase, error) {
	snap, err := e.snapshotter()
	if err != nil {
		return nil, err
	}
	dir := e.Layout.Snapshot(c.Name, name)
	// Asked when used: the KVM probe boots the image's kernel, which the
	// image phase may only now have put in place.
	t := func() Timeouts { return e.timeouts(ctx) }
	one := []plan.Cluster{c}
	return []Phase{
		{Name: "check", Describe: func() string {
			return "check the snapshot belongs to cluster " + c.Name + " and this hypervisor can load it"
		},
			Run: func(ctx context.Context) error {
				m, err := e.ReadSnapshot(c, name)
				if err != nil {
					return err
				}
				return e.checkRestorable(ctx, snap, c, m)
			}},
		{Name: "network", Describe: func() string { return e.describeNetwork() },
			Run: func(ctx context.Context) error {
				_, err := hostnet.Apply(ctx, hostnet.FromPlan(e.Plan, e.Layout.HostNet()))
				return err
			}},
		{Name: "restore", Describe: func() string { return "replace every node by its saved memory, devices and disk layer (paused)" },
			Run: func(ctx context.Context) error {
				return e.eachNode(ctx, one, func(ctx context.Context, m driver.Machine) error {
					e.Progress.Status(m.Name, "loading its saved state")
					if err := snap.RestoreState(ctx, m, filepath.Join(dir, m.Name)); err != nil {
						e.Progress.Final(m.Name, "restore failed")
						return err
					}
					e.Progress.Final(m.Name, "restored, paused")
					return nil
				})
			}},
		{Name: "resume", Describe: func() string { return "let every node run again, all at once" },
			Run: func(ctx context.Context) error { return e.eachNode(ctx, one, snap.Resume) }},
		{Name: "clock", Describe: func() string { return "step every node's clock to the host's" },
			Run: func(ctx context.Context) error { return e.stepClocks(ctx, c.Nodes) }},
		{Name: "apiserver", Describe: func() string { return "wait for the API server's /readyz" },
			Run: func(ctx context.Context) error { return e.waitAPI(ctx, one, t().APIServer) }},
		{Name: "nodes", Describe: func() string { return "wait until every worker is Ready" },
			Run: func(ctx context.Context) error { return e.waitNodes(ctx, one, t().Nodes) }},
	}, nil
}

// Snapshots lists the snapshots of the selected clusters with their size.
func (e *Env) Snapshots() ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	for _, c := range e.clusters() {
		entries, err := os.ReadDir(e.Layout.Snapshots(c.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		for _, ent := range entries {
			if !ent.IsDir() || strings.HasPrefix(ent.Name(), ".") {
				continue
			}
			m, err := e.ReadSnapshot(c, ent.Name())
			if err != nil {
				continue // not a snapshot kubelab finished
			}
			size, err := dirBytes(e.Layout.Snapshot(c.Name, ent.Name()))
			if err != nil {
				return nil, err
			}
			out = append(out, SnapshotInfo{Cluster: c.Name, Name: m.Name, Created: m.Created, Nodes: len(m.Nodes), Bytes: size})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Cluster != out[j].Cluster {
			return out[i].Cluster < out[j].Cluster
		}
		return out[i].Created < out[j].Created
	})
	return out, nil
}

// DeleteSnapshot removes one snapshot of cluster c.
func (e *Env) DeleteSnapshot(c plan.Cluster, name string) error {
	if _, err := e.ReadSnapshot(c, name); err != nil {
		return err
	}
	return os.RemoveAll(e.Layout.Snapshot(c.Name, name))
}

// dirBytes is the disk space the files under dir take (allocated blocks,
// so sparse files count what they use).
func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += allocated(info)
		return nil
	})
	return total, err
}

// allocated is the space a file takes on disk.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
