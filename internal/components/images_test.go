package components

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kubelab/kubelab/internal/versions"
)

// loadImage reads an image tarball back with go-containerregistry and
// returns its config and flattened file system (path -> tar header).
func loadImage(t *testing.T, path, ref string) (entrypoint, cmd []string, fs map[string]*tar.Header, content map[string][]byte) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("load %s as %s: %v", path, ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("%s: platform %s/%s", ref, cf.OS, cf.Architecture)
	}
	fs, content = map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fs[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			content[h.Name] = b
		}
	}
	return cf.Config.Entrypoint, cf.Config.Cmd, fs, content
}

func TestWriteImage(t *testing.T) {
	dir := t.TempDir()
	spec := imageSpec{
		ref: "registry.k8s.io/pause:3.10.2", file: "pause.tar", entrypoint: []string{"/pause"}, user: "65535:65535",
		files: []imageFile{{path: "/pause", mode: 0o755, data: []byte("\x7fELF pause")}},
	}
	p := filepath.Join(dir, spec.file)
	if err := writeImage(p, spec); err != nil {
		t.Fatal(err)
	}
	ep, _, fs, content := loadImage(t, p, spec.ref)
	if !reflect.DeepEqual(ep, []string{"/pause"}) {
		t.Errorf("entrypoint %v", ep)
	}
	if h := fs["pause"]; h == nil || h.Mode&0o111 == 0 || string(content["pause"]) != "\x7fELF pause" {
		t.Errorf("/pause in image: %+v", h)
	}
	// The tarball must not load under any other name.
	other, _ := name.NewTag("registry.k8s.io/pause:3.9")
	if _, err := tarball.ImageFromPath(p, &other); err == nil {
		t.Error("image loaded under a tag it was not written with")
	}
	// Reproducible: the same input gives the same bytes.
	p2 := filepath.Join(dir, "again.tar")
	if err := writeImage(p2, spec); err != nil {
		t.Fatal(err)
	}
	a, _ := hashFile(p)
	b, _ := hashFile(p2)
	if a != b {
		t.Error("writing the same image twice gave different tarballs")
	}
}

func TestBusyboxImage(t *testing.T) {
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		bb = requireTool(t, "busybox")
	}
	files, err := busyboxFiles(context.Background(), bb)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), TestImageFile)
	if err := writeImage(p, imageSpec{ref: versions.TestImage, cmd: []string{"sh"}, files: files}); err != nil {
		t.Fatal(err)
	}
	_, cmd, fs, _ := loadImage(t, p, versions.TestImage)
	if !reflect.DeepEqual(cmd, []string{"sh"}) {
		t.Errorf("cmd %v", cmd)
	}
	if h := fs["bin/busybox"]; h == nil || h.Size < 100000 {
		t.Fatalf("bin/busybox missing or tiny: %+v", h)
	}
	for _, applet := range []string{"sh", "wget", "nslookup", "nc", "httpd"} {
		h := fs["bin/"+applet]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: %+v", applet, h)
		}
	}
	h := fs["tmp/"]
	if h == nil {
		h = fs["tmp"]
	}
	if h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o1777 != 0o1777 {
		t.Errorf("tmp/: %+v", h)
	}
}

func TestCompilePause(t *testing.T) {
	requireTool(t, "gcc")
	requireTool(t, "go")
	ctx := context.Background()
	v := versions.Default()
	gb := &goBuilder{goCmd: "go"}
	src, _, err := gb.moduleDir(ctx, "k8s.io/kubernetes", v.Kubernetes)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	bin, err := compilePause(ctx, filepath.Join(src, "build", "pause", "linux", "pause.c"), "v"+v.Pause+"-kubelab", tmp)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(tmp, "pause")
	if err := os.WriteFile(p, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(p, "-v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pause.c v"+v.Pause+"-kubelab") {
		t.Errorf("pause -v: %v: %s", err, out)
	}
	// Static: no interpreter, so it runs in an image with nothing else.
	if f, err := exec.Command("file", p).Output(); err == nil && !strings.Contains(string(f), "statically linked") {
		t.Errorf("pause is not static: %s", f)
	}
}
