package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubelab/kubelab/internal/versions"
)

// What the node's containerd uses for Kubernetes (nodeconfig.ContainerdConfig):
// CRI's namespace and the snapshotter its images must be unpacked with, so
// that the first pod finds every layer ready.
const (
	criNamespace   = "k8s.io"
	criSnapshotter = "overlayfs"
	// NodeContainerdRoot is containerd's root directory on a node.
	NodeContainerdRoot = "/var/lib/containerd"
)

// Labels CRI itself puts on images it pulls (containerd's
// internal/cri/labels). "pinned" is what kubelet sees as ImageStatus.pinned:
// its image garbage collection never removes such an image, and a node
// without a registry could not get the sandbox image back.
const (
	criManagedLabel = "io.cri-containerd.image=managed"
	criPinnedLabel  = "io.cri-containerd.pinned=pinned"
)

// preloadImage is one image tarball to import.
type preloadImage struct {
	tarball string
	pinned  bool
}

// preloadSpec says what preload imports where.
type preloadSpec struct {
	containerd, ctr string // the built binaries, run on the build host
	// root is containerd's root directory inside the image's root tree
	// (<rootdir>/var/lib/containerd).
	root string
	// work holds the temporary configuration, state, socket and log; the
	// caller removes it.
	work   string
	images []preloadImage
	// refs must all be in the store, complete and unpacked, afterwards.
	refs []string
	log  io.Writer
}

// preloadImages imports the components' image tarballs into the image's
// containerd store, so that a node's first boot imports nothing. Only the
// store goes into the image: the tarballs stay out of it, and the node's
// kubelab-images.service, kept for tarballs a user adds to
// /var/lib/kubelab/images later, finds nothing to do.
func (b *builder) preloadImages(ctx context.Context) error {
	names := b.comps.names("images")
	if len(names) == 0 {
		return nil
	}
	pause := ""
	if p := b.comps.Versions["Pause"]; p != "" {
		pause = versions.Set{Pause: p}.PauseImage()
	}
	s := preloadSpec{
		containerd: filepath.Join(b.comps.Dir, "bin", "containerd"),
		ctr:        filepath.Join(b.comps.Dir, "bin", "ctr"),
		root:       filepath.Join(b.root, NodeContainerdRoot),
		work:       filepath.Join(b.work, "containerd"),
		log:        b.progress,
	}
	pinnedFile := ""
	for _, im := range b.comps.Images {
		s.refs = append(s.refs, im.Ref)
		if im.Ref == pause {
			pinnedFile = filepath.Base(im.File)
		}
	}
	for _, n := range names {
		s.images = append(s.images, preloadImage{tarball: filepath.Join(b.comps.Dir, "images", n), pinned: n == pinnedFile})
	}
	return preload(ctx, s)
}

// preload runs the built containerd on the build host against an image's
// root tree, imports every tarball with the built ctr into namespace k8s.io
// (unpacked with overlayfs, labelled as CRI labels its own images), checks
// the result and stops containerd. Whatever happens, containerd is stopped
// and nothing it mounted stays mounted when preload returns.
func preload(ctx context.Context, s preloadSpec) (err error) {
	for _, bin := range []string{s.containerd, s.ctr} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("preload container images: %w (the components lack it)", err)
		}
	}
	if err := requireOverlayfs(ctx); err != nil {
		return err
	}
	for _, d := range []string{s.root, filepath.Join(s.work, "state"), filepath.Join(s.work, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("preload container images: %w", err)
		}
	}
	// Unix socket paths are limited to 108 bytes; a deep cache dir falls
	// back to a short directory of its own.
	sockDir := s.work
	if len(filepath.Join(sockDir, "containerd.sock.ttrpc")) > 100 {
		sockDir, err = os.MkdirTemp("", "kl-ctrd-")
		if err != nil {
			return fmt.Errorf("preload container images: %w", err)
		}
		defer os.RemoveAll(sockDir)
	}
	sock := filepath.Join(sockDir, "containerd.sock")
	cfgPath := filepath.Join(s.work, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(preloadConfig(s.root, s.work, sock)), 0o600); err != nil {
		return fmt.Errorf("preload container images: %w", err)
	}
	logPath := filepath.Join(s.work, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("preload container images: %w", err)
	}
	defer logf.Close()
	withLog := func(err error) error {
		data, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\ncontainerd log (%s):\n%s", err, logPath, tail(string(data), 15))
	}

	// Pdeathsig ends containerd with this process even when it is killed
	// outright; it follows the thread that started the child, so that
	// thread stays this goroutine's until containerd is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command(s.containerd, "--config", cfgPath)
	cmd.Env = ctrEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("preload container images: start %s: %w", s.containerd, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		stopErr := stopContainerd(cmd, exited)
		dirs := []string{s.root, s.work}
		if sockDir != s.work {
			dirs = append(dirs, sockDir)
		}
		mounted, umountErr := unmountBelow(dirs...)
		switch {
		case err != nil:
			// The first error is the one to report; the others say
			// what cleaning up found.
			if stopErr != nil || umountErr != nil {
				fmt.Fprintf(s.log, "image: cleaning up after a failed preload: %v %v\n", stopErr, umountErr)
			}
		case stopErr != nil:
			err = withLog(fmt.Errorf("preload container images: %w", stopErr))
		case umountErr != nil:
			err = fmt.Errorf("preload container images: %w", umountErr)
		case len(mounted) > 0:
			err = fmt.Errorf("preload container images: containerd left %s mounted (now unmounted)", strings.Join(mounted, ", "))
		}
		if err == nil {
			err = tidyContainerdRoot(s.root)
		}
	}()

	ctr := func(args ...string) (string, error) {
		c := exec.CommandContext(ctx, s.ctr, append([]string{"--address", sock, "--namespace", criNamespace}, args...)...)
		c.Env = ctrEnv()
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		if err := c.Run(); err != nil {
			return out.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, tail(out.String(), 10))
		}
		return out.String(), nil
	}
	if err := waitContainerd(ctx, ctr, exited); err != nil {
		return withLog(fmt.Errorf("preload container images: %w", err))
	}
	for _, im := range s.images {
		start := time.Now()
		args := []string{"images", "import", "--platform", "linux/amd64", "--snapshotter", criSnapshotter, "--label", criManagedLabel}
		if im.pinned {
			args = append(args, "--label", criPinnedLabel)
		}
		if _, err := ctr(append(args, im.tarball)...); err != nil {
			return withLog(fmt.Errorf("preload container images: %w", err))
		}
		fmt.Fprintf(s.log, "image: preloaded %s (%.1fs)\n", filepath.Base(im.tarball), time.Since(start).Seconds())
	}
	// Under exactly the names the node configuration uses, complete and
	// unpacked for the node's snapshotter.
	ready, err := ctr("images", "check", "--quiet", "--snapshotter", criSnapshotter)
	if err != nil {
		return withLog(fmt.Errorf("preload container images: %w", err))
	}
	have := map[string]bool{}
	for _, r := range strings.Fields(ready) {
		have[r] = true
	}
	var missing []string
	for _, r := range s.refs {
		if !have[r] {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		list, _ := ctr("images", "check", "--snapshotter", criSnapshotter)
		return fmt.Errorf("preload container images: not complete and unpacked (%s) in namespace %s after the import: %s\n%s",
			criSnapshotter, criNamespace, strings.Join(missing, ", "), list)
	}
	return nil
}

// requireOverlayfs makes sure the build host's kernel has overlayfs, which
// the snapshotter the images are unpacked with needs (as on the node).
func requireOverlayfs(ctx context.Context) error {
	has := func() bool {
		data, err := os.ReadFile("/proc/filesystems")
		return err == nil && bytes.Contains(data, []byte("\toverlay\n"))
	}
	if has() {
		return nil
	}
	out, err := exec.CommandContext(ctx, "modprobe", "overlay").CombinedOutput()
	if has() {
		return nil
	}
	return fmt.Errorf("preload container images: the build host's kernel has no overlayfs, which unpacking for the node's "+
		"snapshotter needs (modprobe overlay: %v %s)", err, bytes.TrimSpace(out))
}

// preloadConfig is containerd's configuration for the import: the image's
// store as root, everything else in the build's work dir, and none of the
// plugins that would run containers or serve Kubernetes.
func preloadConfig(root, work, sock string) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
`, root, filepath.Join(work, "state"), filepath.Join(work, "tmp"), quoteList(preloadDisabledPlugins),
		sock, sock+".ttrpc")
}

// preloadDisabledPlugins are not needed to import and unpack images. CRI
// in particular would set up networking and runtimes on the build host.
var preloadDisabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.sandbox.controller.v1.shim",
	"io.containerd.nri.v1.nri",
	"io.containerd.runtime.v2.task",
	"io.containerd.monitor.task.v1.cgroups",
	"io.containerd.snapshotter.v1.blockfile",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.erofs",
	"io.containerd.snapshotter.v1.native",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.differ.v1.erofs",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// ctrEnv is the environment without CONTAINERD_* variables, which would
// change ctr's namespace, snapshotter or address behind the flags' back.
func ctrEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CONTAINERD_") {
			env = append(env, e)
		}
	}
	return env
}

// waitContainerd waits until containerd answers on its socket.
func waitContainerd(ctx context.Context, ctr func(...string) (string, error), exited chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := ctr("version")
		if err == nil {
			return nil
		}
		select {
		case werr := <-exited:
			exited <- werr
			return fmt.Errorf("containerd exited before it served: %v", werr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer within 60s: %w", err)
		}
	}
}

// stopContainerd stops containerd with SIGTERM, its clean shutdown (the
// metadata database is closed and synced), and kills it if that takes
// more than 30 seconds.
func stopContainerd(cmd *exec.Cmd, exited chan error) error {
	select {
	case err := <-exited:
		return fmt.Errorf("containerd exited on its own: %v", err)
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM) {
			return fmt.Errorf("containerd did not stop cleanly: %w", err)
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		return errors.New("containerd did not stop within 30s of SIGTERM; killed")
	}
}

// unmountBelow detaches whatever is still mounted below the given
// directories, deepest first, and says what that was.
func unmountBelow(dirs ...string) ([]string, error) {
	var all []string
	for _, d := range dirs {
		m, err := mountsBelow(filepath.Clean(d))
		if err != nil {
			return nil, err
		}
		all = append(all, m...)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	var errs []error
	for _, m := range all {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("umount %s: %w", m, err))
		}
	}
	return all, errors.Join(errs...)
}

// tidyContainerdRoot removes what must not be shared by every node made
// from the image: containerd's instance UUID (each node makes its own) and
// the directory of temporary mounts.
func tidyContainerdRoot(root string) error {
	for _, p := range []string{"io.containerd.grpc.v1.introspection/uuid"} {
		if err := os.Remove(filepath.Join(root, p)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("preload container images: %w", err)
		}
	}
	// Empty after a clean stop; the node's containerd makes it again.
	if err := os.Remove(filepath.Join(root, "tmpmounts")); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("preload container images: tmpmounts not empty after containerd stopped: %w", err)
	}
	return nil
}
