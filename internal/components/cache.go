package components

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/versions"
)

// part is one separately cached component: the files one upstream project
// gives a node.
type part struct {
	name    string   // kubernetes, etcd, ...
	version string   // upstream version of the project
	files   []string // paths relative to the result dir
}

func partsFor(v versions.Set, kube string) []part {
	bins := func(names ...string) []string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = filepath.Join(BinDir, n)
		}
		return out
	}
	return []part{
		{"kubernetes", kube, bins(kubernetesCommands...)},
		{"etcd", v.Etcd, bins("etcd", "etcdctl")},
		{"cni", v.CNIPlugins, func() []string {
			out := make([]string, len(cniPlugins))
			for i, p := range cniPlugins {
				out[i] = filepath.Join(CNIDir, filepath.Base(p))
			}
			return out
		}()},
		{"coredns", v.CoreDNS, bins("coredns")},
		{"containerd", v.Containerd, bins("containerd", "containerd-shim-runc-v2", "ctr")},
		{"runc", v.Runc, bins("runc")},
		{"crictl", v.Crictl, bins("crictl")},
		{"flannel", v.Flannel, bins("flanneld")},
		{"ignition", v.Ignition, bins("ignition")},
	}
}

// kubernetesCommands are the cmd/ packages of Kubernetes a node needs.
var kubernetesCommands = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// cniPlugins are the plugin packages under containernetworking/plugins.
var cniPlugins = []string{"plugins/main/bridge", "plugins/ipam/host-local", "plugins/main/loopback", "plugins/meta/portmap", "plugins/main/ptp", "plugins/meta/bandwidth"}

// recipeRevision is bumped for one part when the way it is built changes
// (flags, patches), so that part and every result holding it are rebuilt
// while the other parts stay cached.
var recipeRevision = map[string]int{
	"cni": 1, // stamp buildversion.BuildVersion
}

// source places the files of one part into a directory.
type source interface {
	// id says what about the source decides the part's bytes; it goes into
	// the part's cache key.
	id(p part) string
	// fetch writes p.files under dir.
	fetch(ctx context.Context, p part, dir string) error
}

func hashStrings(s ...string) string {
	h := sha256.New()
	for _, x := range s {
		fmt.Fprintf(h, "%d:%s;", len(x), x)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// buildPart returns the cache directory of p, building it if needed.
func (r *resolved) buildPart(ctx context.Context, p part) (string, error) {
	start := time.Now()
	in := []string{fmt.Sprint(schemaVersion), p.name, p.version, r.src.id(p), r.in.Toolchain}
	if rev := recipeRevision[p.name]; rev > 0 {
		in = append(in, "recipe", fmt.Sprint(rev))
	}
	dir := filepath.Join(r.root, ".parts", fmt.Sprintf("%s-%s-%s", p.name, p.version, hashStrings(in...)))
	if hasFiles(dir, p.files) {
		fmt.Fprintf(r.Progress, "%-10s %-9s cached (%s)\n", p.name, p.version, since(start))
		return dir, nil
	}
	fmt.Fprintf(r.Progress, "%-10s %-9s building ...\n", p.name, p.version)
	err := buildInto(r.root, dir, func(tmp string) error {
		if err := r.src.fetch(ctx, p, tmp); err != nil {
			return err
		}
		for _, f := range p.files {
			if _, err := os.Stat(filepath.Join(tmp, f)); err != nil {
				return fmt.Errorf("%s was not produced: %w", f, err)
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("%s %s from %s: %w", p.name, p.version, r.Source, err)
	}
	fmt.Fprintf(r.Progress, "%-10s %-9s built (%s)\n", p.name, p.version, since(start))
	return dir, nil
}

func hasFiles(dir string, files []string) bool {
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return len(files) > 0
}

// buildInto runs fill on a fresh temporary directory next to dst and renames
// it to dst only when fill succeeds, so an interrupted or failed build never
// leaves a half-filled cache entry.
func buildInto(root, dst string, fill func(tmp string) error) error {
	tmpRoot := filepath.Join(root, ".tmp")
	if err := os.MkdirAll(tmpRoot, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(tmpRoot, filepath.Base(dst)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // no-op after a successful rename
	if err := fill(tmp); err != nil {
		return err
	}
	// MkdirTemp makes 0700; the cache is read by other tools (image builds).
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	// A stale, incomplete dst (older layout) is replaced.
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// assemble links the parts into the result directory and writes its
// manifest, atomically.
func (r *resolved) assemble(key string, partDirs map[string]string) (Result, error) {
	dst := filepath.Join(r.root, key)
	m := Manifest{
		Key: key, Source: r.Source, Versions: r.Versions,
		KubernetesVersion: r.in.KubernetesVersion, KubernetesTree: r.in.KubernetesTree,
		Toolchain: r.in.Toolchain, Files: map[string]File{},
	}
	names := make([]string, 0, len(partDirs))
	for n := range partDirs {
		names = append(names, n)
	}
	sort.Strings(names)
	err := buildInto(r.root, dst, func(tmp string) error {
		for _, n := range names {
			src := partDirs[n]
			err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(src, path)
				if rel == partImagesFile {
					return nil
				}
				out := filepath.Join(tmp, rel)
				if _, err := os.Stat(out); err == nil {
					return fmt.Errorf("%s is produced by two components", rel)
				}
				if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
					return err
				}
				if err := linkOrCopy(path, out); err != nil {
					return err
				}
				f, err := hashFile(out)
				if err != nil {
					return err
				}
				m.Files[rel] = f
				return nil
			})
			if err != nil {
				return fmt.Errorf("assemble %s: %w", n, err)
			}
		}
		imgs, err := readImageRefs(partDirs["images"])
		if err != nil {
			return err
		}
		m.Images = imgs
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, ManifestFile), append(b, '\n'), 0o644)
	})
	if err != nil {
		return Result{}, fmt.Errorf("assemble components %s: %w", dst, err)
	}
	return Result{Dir: dst, Manifest: m}, nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func hashFile(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, fmt.Errorf("hash %s: %w", path, err)
	}
	return File{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// lockFile takes an exclusive lock so two kubelab processes never build the
// same result at once; the second waits and then finds it cached.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock components cache: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// trimVersion turns v1.2.3 into 1.2.3 for release file names.
func trimVersion(v string) string { return strings.TrimPrefix(v, "v") }
