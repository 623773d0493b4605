package components

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kubelab/kubelab/internal/versions"
)

// partImagesFile lists the refs of an images part; it stays in the part and
// its content goes into the result manifest.
const partImagesFile = "images.json"

// Image tarball file names inside images/.
const (
	PauseImageFile   = "pause.tar"
	CoreDNSImageFile = "coredns.tar"
	TestImageFile    = "busybox.tar"
)

// imageFile is one file in an image layer.
type imageFile struct {
	path string // absolute path in the image, e.g. /pause
	mode int64
	data []byte // regular file content
	link string // symlink target when set
	dir  bool
}

// imageSpec is one image to write.
type imageSpec struct {
	ref        string
	file       string
	files      []imageFile
	entrypoint []string
	cmd        []string
	user       string
}

// buildImages writes the pause, CoreDNS and busybox images, cached as one
// part keyed by every input file.
func (r *resolved) buildImages(ctx context.Context, partDirs map[string]string) (string, error) {
	start := time.Now()
	pauseC, err := r.pauseSource(ctx)
	if err != nil {
		return "", fmt.Errorf("find pause.c: %w", err)
	}
	pauseSum, err := hashFile(pauseC)
	if err != nil {
		return "", err
	}
	corednsBin := filepath.Join(partDirs["coredns"], BinDir, "coredns")
	corednsSum, err := hashFile(corednsBin)
	if err != nil {
		return "", err
	}
	gcc, err := exec.CommandContext(ctx, "gcc", "-dumpfullversion").Output()
	if err != nil {
		return "", fmt.Errorf("gcc is needed to build the pause binary (apt-get install gcc libc6-dev): %w", err)
	}
	refs := []string{r.Versions.PauseImage(), r.Versions.CoreDNSImage(), versions.TestImage}
	key := hashStrings(append([]string{fmt.Sprint(schemaVersion), pauseSum.SHA256, corednsSum.SHA256, r.in.Busybox, strings.TrimSpace(string(gcc))}, refs...)...)
	dir := filepath.Join(r.root, ".parts", "images-"+key)
	if _, err := os.Stat(filepath.Join(dir, partImagesFile)); err == nil {
		fmt.Fprintf(r.Progress, "%-10s %-9s cached (%s)\n", "images", "", since(start))
		return dir, nil
	}
	err = buildInto(r.root, dir, func(tmp string) error {
		pause, err := compilePause(ctx, pauseC, "v"+r.Versions.Pause+"-kubelab", tmp)
		if err != nil {
			return err
		}
		coredns, err := os.ReadFile(corednsBin)
		if err != nil {
			return err
		}
		busybox, err := busyboxFiles(ctx, r.Busybox)
		if err != nil {
			return err
		}
		specs := []imageSpec{
			{ref: refs[0], file: PauseImageFile, entrypoint: []string{"/pause"}, user: "65535:65535",
				files: []imageFile{{path: "/pause", mode: 0o755, data: pause}}},
			{ref: refs[1], file: CoreDNSImageFile, entrypoint: []string{"/coredns"},
				files: []imageFile{{path: "/coredns", mode: 0o755, data: coredns}}},
			{ref: refs[2], file: TestImageFile, cmd: []string{"sh"}, files: busybox},
		}
		var list []Image
		for _, s := range specs {
			rel := filepath.Join(ImagesDir, s.file)
			if err := os.MkdirAll(filepath.Join(tmp, ImagesDir), 0o755); err != nil {
				return err
			}
			if err := writeImage(filepath.Join(tmp, rel), s); err != nil {
				return fmt.Errorf("image %s: %w", s.ref, err)
			}
			list = append(list, Image{Ref: s.ref, File: rel})
		}
		b, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, partImagesFile), b, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("container images: %w", err)
	}
	fmt.Fprintf(r.Progress, "%-10s %-9s built (%s)\n", "images", "", since(start))
	return dir, nil
}

func readImageRefs(dir string) ([]Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, partImagesFile))
	if err != nil {
		return nil, err
	}
	var list []Image
	return list, json.Unmarshal(b, &list)
}

// pauseSource is build/pause/linux/pause.c of the Kubernetes source the
// binaries come from.
func (r *resolved) pauseSource(ctx context.Context) (string, error) {
	if ls, ok := r.src.(*localSource); ok {
		return filepath.Join(ls.tree.dir, "build", "pause", "linux", "pause.c"), nil
	}
	gb := &goBuilder{goCmd: r.Go}
	dir, _, err := gb.moduleDir(ctx, "k8s.io/kubernetes", r.Versions.Kubernetes)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "build", "pause", "linux", "pause.c"), nil
}

// compilePause builds the pause binary the way upstream's pause image does.
func compilePause(ctx context.Context, src, version, tmp string) ([]byte, error) {
	out := filepath.Join(tmp, ".pause")
	cmd := exec.CommandContext(ctx, "gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION="+version, "-o", out, src)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gcc %s: %w: %s", src, err, b)
	}
	if b, err := exec.CommandContext(ctx, "strip", out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("strip pause: %w: %s", err, b)
	}
	defer os.Remove(out)
	return os.ReadFile(out)
}

// busyboxFiles is /bin/busybox plus a symlink for every applet it has, so
// sh, wget, nslookup, nc, httpd, ... work without --install at run time.
func busyboxFiles(ctx context.Context, bin string) ([]imageFile, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", bin, err)
	}
	files := []imageFile{
		{path: "/bin", dir: true, mode: 0o755},
		{path: "/bin/busybox", mode: 0o755, data: data},
		{path: "/etc", dir: true, mode: 0o755},
		{path: "/etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{path: "/etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{path: "/root", dir: true, mode: 0o700},
		{path: "/tmp", dir: true, mode: 0o1777},
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		files = append(files, imageFile{path: "/bin/" + a, link: "busybox", mode: 0o777})
	}
	return files, nil
}

// layerTar is a reproducible tar of files: fixed times and owners.
func layerTar(files []imageFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.dir:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case f.link != "":
			h.Typeflag = tar.TypeSymlink
			h.Linkname = f.link
		default:
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeImage writes a one-layer image as a docker-save tarball tagged ref,
// which `ctr images import` and `docker load` both accept.
func writeImage(path string, s imageSpec) error {
	data, err := layerTar(s.files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Config = v1.Config{
		Entrypoint: s.entrypoint,
		Cmd:        s.cmd,
		User:       s.user,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(s.ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image name %q: %w", s.ref, err)
	}
	return tarball.WriteToFile(path, tag, img)
}
