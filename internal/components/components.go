// Package components builds or fetches the binaries and container images a
// kubelab node needs (Kubernetes, etcd, containerd, runc, CNI plugins,
// CoreDNS, crictl, flanneld) and caches them by their inputs.
//
// Layout of one result, the contract the node image builder relies on:
//
//	$KUBELAB_CACHE/components/<key>/bin/<binary>
//	$KUBELAB_CACHE/components/<key>/cni/<plugin>
//	$KUBELAB_CACHE/components/<key>/images/<name>.tar
//	$KUBELAB_CACHE/components/<key>/manifest.json
package components

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/versions"
)

// Source says where the binaries come from.
type Source string

// The three sources.
const (
	// SourceModules builds everything from upstream source through the Go
	// module proxy. Works offline with only the proxy; what CI uses.
	SourceModules Source = "modules"
	// SourceLocal builds the Kubernetes binaries from a local checkout and
	// the rest as SourceModules does.
	SourceLocal Source = "local"
	// SourceRelease downloads official release artifacts and verifies their
	// sha256 checksums.
	SourceRelease Source = "release"
)

// Directory names inside a result.
const (
	BinDir       = "bin"
	CNIDir       = "cni"
	ImagesDir    = "images"
	ManifestFile = "manifest.json"
)

// schemaVersion goes into every cache key; bump it when the layout or the
// build recipe changes so old caches are not mistaken for new ones.
const schemaVersion = 1

// Options says what to build and where to cache it.
type Options struct {
	Versions versions.Set
	Source   Source // default SourceModules
	// KubernetesSrc is the local Kubernetes checkout for SourceLocal.
	KubernetesSrc string
	// KubernetesVersion overrides the version stamped into binaries built
	// from KubernetesSrc (default: the tree's git describe).
	KubernetesVersion string
	// CacheDir is the kubelab cache root (default DefaultCacheDir()).
	CacheDir string
	// Progress receives one line per component with its duration.
	Progress io.Writer
	// ReleaseMirror replaces "https://" of release URLs, e.g.
	// "http://127.0.0.1:8080/" serves dl.k8s.io/... and github.com/...
	ReleaseMirror string
	// Go is the go command (default "go" from PATH).
	Go string
	// Busybox is the static busybox for the test image (default /bin/busybox).
	Busybox string
}

// Manifest describes one cached result.
type Manifest struct {
	Key      string       `json:"key"`
	Source   Source       `json:"source"`
	Versions versions.Set `json:"versions"`
	// KubernetesVersion is the version stamped into the Kubernetes binaries
	// (differs from Versions.Kubernetes only for a local tree).
	KubernetesVersion string `json:"kubernetesVersion"`
	KubernetesTree    string `json:"kubernetesTree,omitempty"`
	Toolchain         string `json:"toolchain,omitempty"`
	// Files maps every file's path relative to the result dir (bin/kubelet).
	Files  map[string]File `json:"files"`
	Images []Image         `json:"images"`
}

// File is one file of a result.
type File struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Image is one container image tarball of a result.
type Image struct {
	Ref  string `json:"ref"`  // e.g. registry.k8s.io/pause:3.10.2
	File string `json:"file"` // relative to the result dir: images/pause.tar
}

// Result is a complete, cached set of components.
type Result struct {
	Dir      string
	Manifest Manifest
}

// Bin is the path of a node binary in the result.
func (r Result) Bin(name string) string { return filepath.Join(r.Dir, BinDir, name) }

// DefaultCacheDir is $KUBELAB_CACHE, else <user cache dir>/kubelab.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("KUBELAB_CACHE"); d != "" {
		return filepath.Abs(d)
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the cache directory (set KUBELAB_CACHE): %w", err)
	}
	return filepath.Join(d, "kubelab"), nil
}

// resolved is Options with defaults applied and the inputs the cache key is
// made of computed once.
type resolved struct {
	Options
	root  string // <cache>/components
	in    keyInputs
	src   source
	parts []part
}

// keyInputs is everything that decides the bytes of a result. The cache key
// is a hash of exactly this.
type keyInputs struct {
	Schema            int            `json:"schema"`
	Source            Source         `json:"source"`
	Versions          versions.Set   `json:"versions"`
	KubernetesVersion string         `json:"kubernetesVersion"`
	KubernetesTree    string         `json:"kubernetesTree,omitempty"`
	Toolchain         string         `json:"toolchain,omitempty"`
	Busybox           string         `json:"busybox"`
	Recipes           map[string]int `json:"recipes,omitempty"`
}

// key is the result directory name: readable prefix plus an input hash.
func (in keyInputs) key() string {
	b, _ := json.Marshal(in) // plain struct of strings: cannot fail
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%s-%s-%s", in.KubernetesVersion, in.Source, hex.EncodeToString(sum[:])[:16])
}

func resolve(ctx context.Context, o Options) (*resolved, error) {
	if o.Source == "" {
		o.Source = SourceModules
	}
	if o.Versions == (versions.Set{}) {
		o.Versions = versions.Default()
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.CacheDir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		o.CacheDir = d
	}
	r := &resolved{Options: o, root: filepath.Join(o.CacheDir, "components")}
	r.in = keyInputs{Schema: schemaVersion, Source: o.Source, Versions: o.Versions, KubernetesVersion: o.Versions.Kubernetes, Recipes: recipeRevision}
	bb, err := hashFile(o.Busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox for the test image (install busybox-static or set Busybox): %w", err)
	}
	r.in.Busybox = bb.SHA256
	gb := &goBuilder{goCmd: o.Go, work: filepath.Join(r.root, ".work"), log: o.Progress}
	switch o.Source {
	case SourceModules:
		r.src = &moduleSource{gb: gb}
	case SourceLocal:
		if o.KubernetesSrc == "" {
			return nil, errors.New("source local needs a Kubernetes checkout (--kubernetes-src DIR)")
		}
		tree, err := readTree(ctx, o.KubernetesSrc)
		if err != nil {
			return nil, err
		}
		if o.KubernetesVersion != "" {
			tree.version = o.KubernetesVersion
		}
		if tree.version == "" {
			return nil, fmt.Errorf("no version for the Kubernetes tree %s: git describe found no tag; pass --kubernetes-version", o.KubernetesSrc)
		}
		r.in.KubernetesVersion = tree.version
		r.in.KubernetesTree = tree.state
		r.src = &localSource{tree: tree, gb: gb, modules: &moduleSource{gb: gb}}
	case SourceRelease:
		r.src = newReleaseSource(o.ReleaseMirror, &moduleSource{gb: gb})
	default:
		return nil, fmt.Errorf("unknown source %q (want modules, local or release)", o.Source)
	}
	// Even the release source builds flannel, so the toolchain is an input.
	tc, err := gb.version(ctx)
	if err != nil {
		return nil, err
	}
	r.in.Toolchain = tc
	r.parts = partsFor(o.Versions, r.in.KubernetesVersion)
	return r, nil
}

// Key returns the cache key Build would use, without building.
func Key(ctx context.Context, o Options) (string, error) {
	r, err := resolve(ctx, o)
	if err != nil {
		return "", err
	}
	return r.in.key(), nil
}

// ErrNotCached is returned by Lookup when nothing complete is cached.
var ErrNotCached = errors.New("components not cached")

// Lookup returns the cached result for o without building anything.
func Lookup(ctx context.Context, o Options) (Result, error) {
	r, err := resolve(ctx, o)
	if err != nil {
		return Result{}, err
	}
	return lookupDir(filepath.Join(r.root, r.in.key()))
}

func lookupDir(dir string) (Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return Result{}, fmt.Errorf("%w in %s", ErrNotCached, dir)
	}
	if err != nil {
		return Result{}, fmt.Errorf("read components manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Result{}, fmt.Errorf("parse %s: %w (remove the directory to rebuild)", filepath.Join(dir, ManifestFile), err)
	}
	// Cheap completeness check; sha256 of every file would cost seconds.
	for rel, f := range m.Files {
		st, err := os.Stat(filepath.Join(dir, rel))
		if err != nil || st.Size() != f.Size {
			return Result{}, fmt.Errorf("%w: %s is missing or changed in %s (remove the directory to rebuild)", ErrNotCached, rel, dir)
		}
	}
	return Result{Dir: dir, Manifest: m}, nil
}

// List returns every complete result in the cache, sorted by key.
func List(cacheDir string) ([]Result, error) {
	if cacheDir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		cacheDir = d
	}
	root := filepath.Join(cacheDir, "components")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list components cache: %w", err)
	}
	var out []Result
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if res, err := lookupDir(filepath.Join(root, e.Name())); err == nil {
			out = append(out, res)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out, nil
}

// Build returns the cached result for o, building what is missing first.
// Each component is cached on its own, so a failure in one keeps the others.
func Build(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	r, err := resolve(ctx, o)
	if err != nil {
		return Result{}, err
	}
	key := r.in.key()
	dir := filepath.Join(r.root, key)
	if res, err := lookupDir(dir); err == nil {
		fmt.Fprintf(r.Progress, "components %s: cached (%s)\n", key, since(start))
		return res, nil
	}
	if err := os.MkdirAll(r.root, 0o755); err != nil {
		return Result{}, fmt.Errorf("create components cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(r.root, ".lock-"+key))
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	// Another process may have finished while we waited for the lock.
	if res, err := lookupDir(dir); err == nil {
		return res, nil
	}

	partDirs := map[string]string{}
	for _, p := range r.parts {
		d, err := r.buildPart(ctx, p)
		if err != nil {
			return Result{}, err
		}
		partDirs[p.name] = d
	}
	d, err := r.buildImages(ctx, partDirs)
	if err != nil {
		return Result{}, err
	}
	partDirs["images"] = d

	res, err := r.assemble(key, partDirs)
	if err != nil {
		return Result{}, err
	}
	fmt.Fprintf(r.Progress, "components %s: ready in %s\n", key, since(start))
	return res, nil
}

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }
