package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/kubelab/kubelab/internal/versions"
)

// testComponents returns the built components the image tests use.
func testComponents(t *testing.T) Components {
	t.Helper()
	if testing.Short() {
		t.Skip("needs built components; skipped with -short")
	}
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("needs root (containerd, mounts)")
		}
		t.Skip("needs root")
	}
	compDir := os.Getenv("KUBELAB_TEST_COMPONENTS")
	if compDir == "" {
		cache, err := DefaultCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		compDir, err = NewestComponents(cache)
		if err != nil {
			if ci {
				t.Fatalf("no built components (the CI script builds them first): %v", err)
			}
			t.Skipf("no built components: %v", err)
		}
	}
	comps, err := LoadComponents(compDir)
	if err != nil {
		t.Fatal(err)
	}
	return comps
}

// layeredTestImage writes a two-layer docker-save tarball whose second
// layer deletes a file (whiteout) and replaces a directory (opaque), with
// an owner, a setuid bit and an xattr that must survive into the node.
func layeredTestImage(t *testing.T, path, ref string) {
	t.Helper()
	type entry struct {
		name, body string
		dir        bool
		mode       int64
		uid, gid   int
		xattr      map[string]string
	}
	layer := func(entries []entry) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: time.Unix(0, 0),
				Typeflag: tar.TypeReg, Size: int64(len(e.body)), Format: tar.FormatPAX}
			if e.dir {
				h.Typeflag, h.Size = tar.TypeDir, 0
			}
			for k, v := range e.xattr {
				if h.PAXRecords == nil {
					h.PAXRecords = map[string]string{}
				}
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	l1 := layer([]entry{
		{name: "gone", body: "deleted by layer 2\n", mode: 0o644},
		{name: "d/", dir: true, mode: 0o755},
		{name: "d/old", body: "hidden by layer 2\n", mode: 0o644},
		{name: "owned", body: "x\n", mode: 0o4750, uid: 1234, gid: 5678, xattr: map[string]string{"user.kubelab": "kept"}},
	})
	l2 := layer([]entry{
		{name: ".wh.gone", mode: 0o644},
		{name: "d/", dir: true, mode: 0o755},
		{name: "d/.wh..wh..opq", mode: 0o644},
		{name: "d/new", body: "from layer 2\n", mode: 0o644},
	})
	img := empty.Image
	for _, data := range [][]byte{l1, l2} {
		data := data
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

// TestPreloadImages runs the preload step with the built containerd
// against a root tree in a temp dir (no VM): the components' images and a
// layered test image end up complete, unpacked with overlayfs and labelled
// in namespace k8s.io; the overlay whiteouts, owners and xattrs survive
// mkfs.ext4 -d; containerd is gone and nothing stays mounted.
func TestPreloadImages(t *testing.T) {
	comps := testComponents(t)
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		requireTool(t, tool)
	}
	dir := t.TempDir()
	rootdir := filepath.Join(dir, "root")
	layered := filepath.Join(dir, "layered.tar")
	const layeredRef = "kubelab.local/layered:test"
	layeredTestImage(t, layered, layeredRef)

	pause := versions.Set{Pause: comps.Versions["Pause"]}.PauseImage()
	s := preloadSpec{
		containerd: filepath.Join(comps.Dir, "bin", "containerd"),
		ctr:        filepath.Join(comps.Dir, "bin", "ctr"),
		root:       filepath.Join(rootdir, NodeContainerdRoot),
		work:       filepath.Join(dir, "work"),
		log:        testWriter{t},
		images:     []preloadImage{{tarball: layered}},
		refs:       []string{layeredRef},
	}
	for _, im := range comps.Images {
		s.images = append(s.images, preloadImage{tarball: filepath.Join(comps.Dir, im.File), pinned: im.Ref == pause})
		s.refs = append(s.refs, im.Ref)
	}
	if len(comps.Images) < 3 {
		t.Fatalf("components list %d images, want pause, CoreDNS and the test image", len(comps.Images))
	}
	start := time.Now()
	if err := preload(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	t.Logf("preload of %d images: %.1fs", len(s.images), time.Since(start).Seconds())
	assertNoContainerdLeft(t, dir)
	for _, p := range []string{"io.containerd.grpc.v1.introspection/uuid", "tmpmounts"} {
		if _, err := os.Stat(filepath.Join(s.root, p)); err == nil {
			t.Errorf("%s left in the image's containerd root", p)
		}
	}
	if out, err := exec.Command("find", s.root, "-maxdepth", "2").CombinedOutput(); err == nil {
		t.Logf("containerd root after preload:\n%s", out)
	}

	// The store as a node's containerd finds it: start it again on the
	// same root and ask.
	sock := filepath.Join(dir, "c.sock")
	cfg := filepath.Join(dir, "again.toml")
	if err := os.WriteFile(cfg, []byte(preloadConfig(s.root, filepath.Join(dir, "again"), sock)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(s.containerd, "--config", cfg)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command(s.ctr, append([]string{"--address", sock, "-n", criNamespace}, args...)...).CombinedOutput()
		return string(out), err
	}
	if err := waitContainerd(context.Background(), ctr, exited); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	ls, err := ctr("images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v: %s", err, ls)
	}
	check, err := ctr("images", "check", "--snapshotter", criSnapshotter)
	if err != nil {
		t.Errorf("ctr images check: %v: %s", err, check)
	}
	if err := stopContainerd(cmd, exited); err != nil {
		t.Errorf("second containerd: %v\n%s", err, logs.String())
	}
	t.Logf("store after preload:\n%s\n%s", ls, check)
	names := map[string]string{} // ref -> its ls line
	for _, line := range strings.Split(ls, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			names[f[0]] = line
		}
	}
	if len(names) != len(s.refs) {
		t.Errorf("%d images in the store, want exactly %v", len(names), s.refs)
	}
	for _, ref := range s.refs {
		line, ok := names[ref]
		if !ok {
			t.Errorf("%s not in namespace %s", ref, criNamespace)
			continue
		}
		if !strings.Contains(line, criManagedLabel) {
			t.Errorf("%s lacks CRI's label %s: %s", ref, criManagedLabel, line)
		}
		if pinned := strings.Contains(line, criPinnedLabel); pinned != (ref == pause) {
			t.Errorf("%s: pinned = %v, want %v: %s", ref, pinned, ref == pause, line)
		}
		if !regexpLine(check, ref, "complete", "true") {
			t.Errorf("%s not complete and unpacked with %s:\n%s", ref, criSnapshotter, check)
		}
	}

	// Overlay whiteouts as the node's kernel reads them: a 0/0 character
	// device for the deleted file, trusted.overlay.opaque on the replaced
	// directory. Find them in the snapshots, then in an ext4 made like the
	// image's.
	snaps := filepath.Join(s.root, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
	var whiteout, opaque, owned string
	err = filepath.Walk(snaps, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootdir, p)
		switch {
		case fi.Name() == "gone" && fi.Mode()&os.ModeCharDevice != 0:
			whiteout = "/" + rel
		case fi.Name() == "d" && fi.IsDir():
			if v, err := getxattr(p, "trusted.overlay.opaque"); err == nil && v == "y" {
				opaque = "/" + rel
			}
		case fi.Name() == "owned":
			owned = "/" + rel
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if whiteout == "" || opaque == "" || owned == "" {
		t.Fatalf("overlay snapshots lack the whiteout (%q), opaque dir (%q) or owned file (%q)", whiteout, opaque, owned)
	}
	disk := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", rootdir, "-E", "lazy_itable_init=1,lazy_journal_init=1", disk, "1G").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, disk).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v: %s", req, err, out)
		}
		return string(out)
	}
	if st := debugfs("stat " + whiteout); !strings.Contains(st, "Type: character special") || !strings.Contains(st, "Device major/minor number: 00:00") {
		t.Errorf("whiteout %s in the ext4 image:\n%s", whiteout, st)
	}
	if ea := debugfs("ea_list " + opaque); !strings.Contains(ea, `trusted.overlay.opaque (1) = "y"`) {
		t.Errorf("opaque dir %s in the ext4 image:\n%s", opaque, ea)
	}
	st := debugfs("stat " + owned)
	for _, want := range []string{"Mode:  04750", "User:  1234", "Group:  5678", `user.kubelab (4) = "kept"`} {
		if !strings.Contains(st, want) {
			t.Errorf("%s in the ext4 image lacks %q:\n%s", owned, want, st)
		}
	}
}

// regexpLine reports whether some line starting with ref has all words.
func regexpLine(out, ref string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, ref+" ") {
			continue
		}
		ok := true
		for _, w := range words {
			if !strings.Contains(line, w) {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func getxattr(path, attr string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, attr, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// assertNoContainerdLeft fails when a process still runs with a path below
// dir on its command line, or something is mounted below dir.
func assertNoContainerdLeft(t *testing.T, dir string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte(dir)) {
			t.Errorf("process %s still runs: %s", filepath.Base(filepath.Dir(p)), bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
		}
	}
	if m, err := mountsBelow(dir); err != nil || len(m) > 0 {
		t.Errorf("still mounted below %s: %v %v", dir, m, err)
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	if bytes.Contains(mounts, []byte(dir)) {
		t.Errorf("/proc/mounts still names %s:\n%s", dir, mounts)
	}
}

// TestPreloadFailureLeavesNothing imports a broken tarball: the error says
// so, and neither containerd nor a mount is left behind.
func TestPreloadFailureLeavesNothing(t *testing.T) {
	comps := testComponents(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.tar")
	if err := os.WriteFile(bad, []byte("this is not a tar archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(comps.Dir, comps.Images[0].File)
	err := preload(context.Background(), preloadSpec{
		containerd: filepath.Join(comps.Dir, "bin", "containerd"),
		ctr:        filepath.Join(comps.Dir, "bin", "ctr"),
		root:       filepath.Join(dir, "root", NodeContainerdRoot),
		work:       filepath.Join(dir, "work"),
		log:        testWriter{t},
		images:     []preloadImage{{tarball: good}, {tarball: bad}},
		refs:       []string{comps.Images[0].Ref},
	})
	if err == nil || !strings.Contains(err.Error(), "bad.tar") {
		t.Fatalf("preload of a broken tarball: err = %v, want an error naming it", err)
	}
	t.Logf("error as reported:\n%v", err)
	assertNoContainerdLeft(t, dir)

	// A ref that the tarballs do not hold fails the check after import.
	err = preload(context.Background(), preloadSpec{
		containerd: filepath.Join(comps.Dir, "bin", "containerd"),
		ctr:        filepath.Join(comps.Dir, "bin", "ctr"),
		root:       filepath.Join(dir, "root2", NodeContainerdRoot),
		work:       filepath.Join(dir, "work2"),
		log:        testWriter{t},
		images:     []preloadImage{{tarball: good}},
		refs:       []string{comps.Images[0].Ref, "registry.k8s.io/not-there:1"},
	})
	if err == nil || !strings.Contains(err.Error(), "registry.k8s.io/not-there:1") {
		t.Fatalf("preload with a missing ref: err = %v, want an error naming it", err)
	}
	assertNoContainerdLeft(t, dir)

	// Cancelled (kubelab interrupted) while the second image imports.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var images []preloadImage
	var refs []string
	for _, im := range comps.Images {
		images = append(images, preloadImage{tarball: filepath.Join(comps.Dir, im.File)})
		refs = append(refs, im.Ref)
	}
	err = preload(ctx, preloadSpec{
		containerd: filepath.Join(comps.Dir, "bin", "containerd"),
		ctr:        filepath.Join(comps.Dir, "bin", "ctr"),
		root:       filepath.Join(dir, "root3", NodeContainerdRoot),
		work:       filepath.Join(dir, "work3"),
		log: writerFunc(func(p []byte) {
			t.Log(strings.TrimSpace(string(p)))
			cancel()
		}),
		images: images,
		refs:   refs,
	})
	if err == nil {
		t.Fatal("preload went on after its context was cancelled")
	}
	t.Logf("cancelled: %v", err)
	assertNoContainerdLeft(t, dir)
}

type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// TestUnmountBelow: whatever is left mounted below the preload's
// directories is detached, deepest first, and reported.
func TestUnmountBelow(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("mounting needs root")
		}
		t.Skip("mounting needs root")
	}
	dir := t.TempDir()
	outer, inner := filepath.Join(dir, "a"), filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(outer, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", outer, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(outer, unix.MNT_DETACH) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(inner, unix.MNT_DETACH) })
	got, err := unmountBelow(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != inner || got[1] != outer {
		t.Errorf("unmounted %v, want [%s %s]", got, inner, outer)
	}
	if m, _ := mountsBelow(dir); len(m) != 0 {
		t.Errorf("still mounted: %v", m)
	}
}

// TestBuildFailureLeavesNothing builds the node image from components
// whose images include a broken tarball: the build fails in the preload
// step and leaves no cache entry, no build directory, no containerd and no
// mount behind (the base system comes from the cache when it is there).
func TestBuildFailureLeavesNothing(t *testing.T) {
	comps := testComponents(t)
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img"} {
		requireTool(t, tool)
	}
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	// The real components, linked, plus one tarball that is not one.
	dir := t.TempDir()
	for rel := range comps.Files {
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(comps.Dir, rel), dst); err != nil {
			t.Fatal(err)
		}
	}
	manifest, err := os.ReadFile(filepath.Join(comps.Dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "zz-broken.tar"), []byte("not a tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	broken, err := LoadComponents(dir)
	if err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(cache, "images")
	before, _ := filepath.Glob(filepath.Join(images, "*"))
	beforeHidden, _ := filepath.Glob(filepath.Join(images, ".build-*"))
	_, err = Build(context.Background(), BuildOptions{Components: broken, CacheDir: cache, Progress: testWriter{t}})
	if err == nil || !strings.Contains(err.Error(), "preload") || !strings.Contains(err.Error(), "zz-broken.tar") {
		t.Fatalf("build with a broken image tarball: err = %v, want a preload error naming it", err)
	}
	after, _ := filepath.Glob(filepath.Join(images, "*"))
	afterHidden, _ := filepath.Glob(filepath.Join(images, ".build-*"))
	if len(after) != len(before) || len(afterHidden) != len(beforeHidden) {
		t.Errorf("the failed build left cache entries: before %v %v, after %v %v", before, beforeHidden, after, afterHidden)
	}
	assertNoContainerdLeft(t, images)
}
