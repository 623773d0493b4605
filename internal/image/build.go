// Package image builds kubelab's own node image from Debian packages and the
// built components, imports foreign images (Flatcar, Fedora CoreOS, cloud
// images) after checking their signatures, and keeps both in a cache keyed
// by their inputs.
package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/versions"
)

// Artifact file names inside an image directory.
const (
	DiskFile     = "disk.qcow2"
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	ManifestFile = "manifest.json"
)

// Provisioning methods an image can be configured by.
const (
	ProvisionOverlay   = "overlay"
	ProvisionCloudInit = "cloud-init"
	ProvisionIgnition  = "ignition"
)

// IgnitionFirstBootFlag is the root file system's first-boot flag (the Xen
// guide's coreos/first_boot): Ignition runs at a boot that finds it.
const IgnitionFirstBootFlag = "/boot/ignition.firstboot"

// provisioning lists how an image with these components can be
// configured, preferred first.
func provisioning(c Components) []string {
	p := []string{ProvisionOverlay, ProvisionCloudInit}
	if c.HasIgnition() {
		p = append(p, ProvisionIgnition)
	}
	return p
}

// Manifest describes one image directory.
type Manifest struct {
	Name string `json:"name"`
	// Kind is "kubelab" for a built node image, "imported" for a foreign one.
	Kind       string `json:"kind"`
	InputsHash string `json:"inputs_hash,omitempty"`
	Created    string `json:"created"`
	// Provisioning lists how the image can be configured (overlay,
	// cloud-init, ignition), preferred first.
	Provisioning []string `json:"provisioning"`
	// KernelCmdline is for direct kernel boot; KernelCmdlineNoCloudInit is
	// appended when the node is configured by the overlay disk.
	KernelCmdline            string `json:"kernel_cmdline,omitempty"`
	KernelCmdlineNoCloudInit string `json:"kernel_cmdline_no_cloud_init,omitempty"`
	// KernelCmdlineTemplate is appended (after KernelCmdlineNoCloudInit)
	// for a template boot: the image waits for its configuration disk and
	// applies it when a node resumes from the saved template. Empty: the
	// image cannot be a template.
	KernelCmdlineTemplate    string            `json:"kernel_cmdline_template,omitempty"`
	Packages                 map[string]string `json:"packages,omitempty"`
	Components               map[string]string `json:"components,omitempty"`
	ComponentsManifestSHA256 string            `json:"components_manifest_sha256,omitempty"`
	// Images are in the image's containerd store (namespace k8s.io,
	// unpacked with overlayfs) under these refs; the tarballs are not.
	Images []ComponentImage `json:"images,omitempty"`
	// Artifacts maps each file of the image directory to its sha256.
	Artifacts map[string]string `json:"artifacts"`
	// ApparentSize is the size of the root filesystem as the guest sees it.
	ApparentSize int64   `json:"apparent_size,omitempty"`
	Source       *Source `json:"source,omitempty"`
}

// BuildOptions configure Build.
type BuildOptions struct {
	Components Components
	// CacheDir is the kubelab cache root; images go to CacheDir/images/<hash>.
	CacheDir string
	// Inputs overrides DefaultInputs(Components) (tests, other suites).
	Inputs *Inputs
	// Progress receives one line per phase with its duration.
	Progress io.Writer
}

// Built is a node image in the cache.
type Built struct {
	Dir      string
	Manifest Manifest
	Cached   bool // true when nothing had to be built
}

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

// Build builds kubelab's node image unless an image with the same inputs is
// in the cache already. It needs root (mmdebstrap --mode=root, chroot).
func Build(ctx context.Context, opts BuildOptions) (Built, error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	in := opts.Inputs
	if in == nil {
		def, err := DefaultInputs(opts.Components)
		if err != nil {
			return Built{}, err
		}
		in = &def
	}
	hash := in.Hash()
	final := filepath.Join(opts.CacheDir, "images", hash)
	if m, err := ReadManifest(final); err == nil {
		fmt.Fprintf(progress, "image: cached %s\n", final)
		return Built{Dir: final, Manifest: m, Cached: true}, nil
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Built{}, fmt.Errorf("build node image: %s not found (run hack/install-deps.sh): %w", tool, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return Built{}, fmt.Errorf("create image cache: %w", err)
	}
	removeStaleBuilds(filepath.Dir(final), 12*time.Hour)
	work, err := os.MkdirTemp(filepath.Dir(final), ".build-"+hash[:12]+"-")
	if err != nil {
		return Built{}, fmt.Errorf("create image build dir: %w", err)
	}
	defer func() {
		if err := safeRemoveAll(work); err != nil {
			fmt.Fprintf(progress, "image: warning: %v\n", err)
		}
	}()
	b := &builder{in: *in, comps: opts.Components, work: work, root: filepath.Join(work, "root"),
		baseCache: filepath.Join(opts.CacheDir, "rootfs"), progress: progress}
	m, err := b.run(ctx)
	if err != nil {
		return Built{}, err
	}
	m.InputsHash = hash
	m.Name = "kubelab-" + hash[:12]
	if err := writeManifest(work, m); err != nil {
		return Built{}, err
	}
	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Built{}, err
	}
	for _, f := range []string{DiskFile, KernelFile, InitrdFile, ManifestFile} {
		if err := os.Rename(filepath.Join(work, f), filepath.Join(out, f)); err != nil {
			return Built{}, fmt.Errorf("collect image artifacts: %w", err)
		}
	}
	// One rename makes the image visible: a cache entry is complete or absent.
	if err := os.Rename(out, final); err != nil {
		// A concurrent build of the same inputs got there first: same image.
		if m, rerr := ReadManifest(final); rerr == nil {
			return Built{Dir: final, Manifest: m, Cached: true}, nil
		}
		return Built{}, fmt.Errorf("store image in cache %s: %w", final, err)
	}
	return Built{Dir: final, Manifest: m}, nil
}

type builder struct {
	in        Inputs
	comps     Components
	work      string
	root      string
	baseCache string // CacheDir/rootfs: mmdebstrap results as tarballs
	progress  io.Writer
}

func (b *builder) phase(name string, fn func() error) error {
	start := time.Now()
	if err := fn(); err != nil {
		return fmt.Errorf("image build, phase %s: %w", name, err)
	}
	fmt.Fprintf(b.progress, "image: %-20s %6.1fs\n", name, time.Since(start).Seconds())
	return nil
}

func (b *builder) run(ctx context.Context) (Manifest, error) {
	m := Manifest{
		Kind:                     "kubelab",
		Created:                  time.Now().UTC().Format(time.RFC3339),
		Provisioning:             provisioning(b.comps),
		KernelCmdline:            b.in.KernelCmdline,
		KernelCmdlineNoCloudInit: KernelCmdlineNoCloudInit,
		KernelCmdlineTemplate:    KernelCmdlineTemplate,
		Components:               b.comps.Versions,
		ComponentsManifestSHA256: b.comps.ManifestSHA256,
		Images:                   b.comps.Images,
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"base system", func() error { return b.baseSystem(ctx) }},
		{"configure", b.configure},
		{"install components", b.installComponents},
		{"initramfs", func() error { return b.initramfs(ctx) }},
		{"preload images", func() error { return b.preloadImages(ctx) }},
		{"package versions", func() (err error) { m.Packages, err = b.packageVersions(ctx); return err }},
		{"kernel extraction", b.extractKernel},
		{"mkfs", func() error { return b.mkfs(ctx) }},
		{"qcow2", func() error { return b.qcow2(ctx) }},
		{"checksums", func() (err error) {
			m.Artifacts, err = hashArtifacts(b.work, DiskFile, KernelFile, InitrdFile)
			return err
		}},
	}
	for _, s := range steps {
		if err := b.phase(s.name, s.fn); err != nil {
			return m, err
		}
	}
	size, err := virtualSize(ctx, filepath.Join(b.work, DiskFile))
	if err != nil {
		return m, err
	}
	m.ApparentSize = size
	return m, nil
}

// baseSystem makes the Debian root filesystem. mmdebstrap's result is kept
// as a tarball keyed by its own inputs, so a components-only change (the
// common case while developing Kubernetes) skips the minutes mmdebstrap
// takes.
func (b *builder) baseSystem(ctx context.Context) error {
	tarball := filepath.Join(b.baseCache, b.in.BaseHash()+".tar")
	if _, err := os.Stat(tarball); err == nil {
		if err := os.Mkdir(b.root, 0o755); err != nil {
			return err
		}
		fmt.Fprintf(b.progress, "image: base system from %s\n", tarball)
		return runLogged(ctx, filepath.Join(b.work, "tar.log"), "tar", "-x", "-p", "--xattrs", "--xattrs-include=*",
			"--numeric-owner", "-f", tarball, "-C", b.root)
	}
	if err := b.mmdebstrap(ctx); err != nil {
		return err
	}
	if err := os.MkdirAll(b.baseCache, 0o755); err != nil {
		return err
	}
	tmp := tarball + ".tmp-" + randHex(4)
	if err := runLogged(ctx, filepath.Join(b.work, "tar.log"), "tar", "-c", "--xattrs", "--xattrs-include=*",
		"--numeric-owner", "-f", tmp, "-C", b.root, "."); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, tarball)
}

func (b *builder) mmdebstrap(ctx context.Context) error {
	args := append([]string{}, b.in.MmdebstrapOpts...)
	args = append(args, "--include="+strings.Join(b.in.Packages, ","), b.in.Suite, b.root)
	args = append(args, b.in.Sources...)
	return runLogged(ctx, filepath.Join(b.work, "mmdebstrap.log"), "mmdebstrap", args...)
}

// configure bakes kubelab's units and settings into the root filesystem.
func (b *builder) configure() error {
	files := []struct {
		asset, dest string
		mode        fs.FileMode
	}{
		{"kubelab-overlay.service", "etc/systemd/system/kubelab-overlay.service", 0o644},
		{"kubelab-images.service", "etc/systemd/system/kubelab-images.service", 0o644},
		{"kubelab-ready.service", "etc/systemd/system/kubelab-ready.service", 0o644},
		{"kubelab-ssh-keygen.service", "etc/systemd/system/kubelab-ssh-keygen.service", 0o644},
		{"apply-overlay", "usr/local/lib/kubelab/apply-overlay", 0o755},
		{"kubelab-overlay-generator", "usr/lib/systemd/system-generators/kubelab-overlay", 0o755},
		{"generator-enable", "usr/local/lib/kubelab/generator-enable", 0o755},
		{"kubelab-ignition-generator", "usr/lib/systemd/system-generators/kubelab-ignition", 0o755},
		{"ignition-hook", "etc/initramfs-tools/hooks/kubelab-ignition", 0o755},
		{"ignition-initramfs", "etc/initramfs-tools/scripts/local-bottom/kubelab-ignition", 0o755},
		{"import-images", "usr/local/lib/kubelab/import-images", 0o755},
		{"ready", "usr/local/lib/kubelab/ready", 0o755},
		{"await-config", "usr/local/lib/kubelab/await-config", 0o755},
		{"kubelab-template.service", "etc/systemd/system/kubelab-template.service", 0o644},
		{"99-kubelab.cfg", "etc/cloud/cloud.cfg.d/99-kubelab.cfg", 0o644},
		{"00-kubelab.preset", "etc/systemd/system-preset/00-kubelab.preset", 0o644},
		{"wait-online.conf", "etc/systemd/system/systemd-networkd-wait-online.service.d/kubelab.conf", 0o644},
		{"ssh.conf", "etc/systemd/system/ssh.service.d/kubelab.conf", 0o644},
	}
	for _, f := range files {
		data, err := assets.ReadFile("assets/" + f.asset)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(b.root, f.dest), data, f.mode); err != nil {
			return err
		}
	}
	if err := writeFile(filepath.Join(b.root, "etc/hostname"), []byte("kubelab-node\n"), 0o644); err != nil {
		return err
	}
	// Every disk made from the image is a first boot for Ignition (when
	// the command line names an Ignition platform); see ignition-initramfs.
	if err := writeFile(filepath.Join(b.root, IgnitionFirstBootFlag), []byte("set by kubelab's image build; removed by Ignition's first run, set again by kubelab refresh\n"), 0o644); err != nil {
		return err
	}
	// Host keys come from the node configuration; identical keys on every
	// node would be worse than none.
	keys, _ := filepath.Glob(filepath.Join(b.root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	// DNS servers come from the node configuration, not the build host.
	_ = os.Remove(filepath.Join(b.root, "etc/resolv.conf"))
	if err := writeFile(filepath.Join(b.root, "etc/resolv.conf"), nil, 0o644); err != nil {
		return err
	}
	for _, d := range []string{versions.NodeCNIBinDir, versions.NodeImagesDir, "/etc/kubelab", "/etc/cni/net.d"} {
		if err := os.MkdirAll(filepath.Join(b.root, d), 0o755); err != nil {
			return err
		}
	}
	disable := []string{"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
		"e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "getty@tty1.service",
		"cloud-init-hotplugd.socket",
		// Its package enables it; the node configuration enables it on the
		// control planes of a cluster with two or more.
		"keepalived.service"}
	enable := []string{"systemd-networkd.service", "kubelab-overlay.service",
		"kubelab-ready.service", "kubelab-images.service", "kubelab-ssh-keygen.service",
		"kubelab-template.service"}
	if err := b.systemctl(append([]string{"disable"}, disable...)...); err != nil {
		return err
	}
	if err := b.systemctl(append([]string{"enable"}, enable...)...); err != nil {
		return err
	}
	if err := b.systemctl(append([]string{"mask"}, maskedUnits...)...); err != nil {
		return err
	}
	return b.markUpdated()
}

// maskedUnits are units of a Debian system no kubelab node needs. Each is a
// process (or a few) at every boot: under emulation, with one vCPU that all
// early units share, each costs around a second (BenchmarkBoot measures).
var maskedUnits = []string{
	// Pseudo file systems nothing on a node uses, and the module loads they
	// pull in (configfs, fuse).
	"sys-kernel-config.mount", "sys-fs-fuse-connections.mount",
	"sys-kernel-debug.mount", "sys-kernel-tracing.mount",
	// No foreign binary formats.
	"systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
	// Skipped by their conditions, but they start what they want anyway:
	// modprobe@loop and modprobe@dm_mod (repart), modprobe@efi_pstore.
	"systemd-repart.service", "systemd-pstore.service",
	// logind wants it; there are no graphics.
	"modprobe@drm.service",
	// Every node would load the image's one seed; virtio-rng seeds the
	// kernel's generator within the first second.
	"systemd-random-seed.service",
	// Networks come from the node configuration, never from ip= on the
	// kernel command line.
	"systemd-network-generator.service",
	// utmp bookkeeping of boots and runlevels.
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
	// No fstab entries: the root is mounted read-write by the kernel (rw on
	// the command line); it was on the way to the network.
	"systemd-remount-fs.service",
}

// markUpdated records that /etc and /var are up to date with /usr, as
// systemd-update-done does on a booted system. Without it every node's
// first boot runs the ConditionNeedsUpdate=/etc units (systemd-sysusers, on
// the way to the network) to redo what the packages' installation did.
func (b *builder) markUpdated() error {
	usr, err := os.Stat(filepath.Join(b.root, "usr"))
	if err != nil {
		return err
	}
	// systemd compares seconds first: a later second is "up to date".
	stamp := time.Now()
	if !stamp.After(usr.ModTime().Add(time.Second)) {
		stamp = usr.ModTime().Add(2 * time.Second)
	}
	body := fmt.Sprintf("# Written by kubelab's image build, as systemd-update-done would.\nTIMESTAMP_NSEC=%d\n", usr.ModTime().UnixNano())
	for _, d := range []string{"etc", "var"} {
		p := filepath.Join(b.root, d, ".updated")
		if err := writeFile(p, []byte(body), 0o644); err != nil {
			return err
		}
		if err := os.Chtimes(p, stamp, stamp); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) systemctl(args ...string) error {
	// --root works offline on the image without a running systemd.
	cmd := exec.Command("systemctl", append([]string{"--root=" + b.root, "--quiet", "--no-reload"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s in the image: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// initramfs makes the initrd again now that the components are in: with
// the ignition component, Ignition and its first-boot script go into it.
func (b *builder) initramfs(ctx context.Context) error {
	// A mount namespace of its own: mkinitramfs wants /proc, and the
	// mount goes away with the process.
	return runLogged(ctx, filepath.Join(b.work, "initramfs.log"), "unshare", "--mount", "--fork", "chroot", b.root,
		"sh", "-c", "mount -t proc proc /proc && update-initramfs -u -k all")
}

// installComponents installs the binaries and CNI plugins. The container
// image tarballs are not installed: preloadImages puts the images into
// containerd's store instead.
func (b *builder) installComponents() error {
	for _, p := range []struct{ sub, dest string }{
		{"bin", versions.NodeBinDir}, {"cni", versions.NodeCNIBinDir},
	} {
		for _, name := range b.comps.names(p.sub) {
			src := filepath.Join(b.comps.Dir, p.sub, name)
			if err := copyFile(src, filepath.Join(b.root, p.dest, name), 0o755); err != nil {
				return fmt.Errorf("install %s: %w", src, err)
			}
		}
	}
	return nil
}

func (b *builder) packageVersions(ctx context.Context) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, "dpkg-query", "--admindir="+filepath.Join(b.root, "var/lib/dpkg"),
		"-W", "-f=${Package}\t${Version}\n")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("list packages of the image with dpkg-query: %w", err)
	}
	pkgs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, ver, ok := strings.Cut(line, "\t"); ok {
			pkgs[name] = ver
		}
	}
	return pkgs, nil
}

// extractKernel copies the kernel and initrd out for direct kernel boot and
// drops them from the root filesystem: nothing boots it through a loader.
func (b *builder) extractKernel() error {
	for _, k := range []struct{ glob, dest string }{
		{"boot/vmlinuz-*", KernelFile}, {"boot/initrd.img-*", InitrdFile},
	} {
		matches, _ := filepath.Glob(filepath.Join(b.root, k.glob))
		sort.Strings(matches)
		if len(matches) == 0 {
			return fmt.Errorf("no %s in the image (is linux-image-cloud-amd64 in the package list?)", k.glob)
		}
		src := matches[len(matches)-1]
		if err := copyFile(src, filepath.Join(b.work, k.dest), 0o644); err != nil {
			return err
		}
		if err := os.Remove(src); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) mkfs(ctx context.Context) error {
	return runLogged(ctx, filepath.Join(b.work, "mkfs.log"), "mkfs.ext4", "-q", "-F", "-L", RootLabel,
		"-d", b.root, "-E", "lazy_itable_init=1,lazy_journal_init=1",
		filepath.Join(b.work, "disk.raw"), b.in.DiskSize)
}

func (b *builder) qcow2(ctx context.Context) error {
	raw := filepath.Join(b.work, "disk.raw")
	if err := runLogged(ctx, filepath.Join(b.work, "qemu-img.log"), "qemu-img", "convert", "-O", "qcow2",
		raw, filepath.Join(b.work, DiskFile)); err != nil {
		return err
	}
	return os.Remove(raw)
}

func virtualSize(ctx context.Context, disk string) (int64, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", disk).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", disk, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("parse qemu-img info of %s: %w", disk, err)
	}
	return info.VirtualSize, nil
}

// runLogged runs a command with its output in a log file and returns the
// log's tail with the error.
func runLogged(ctx context.Context, logPath, name string, args ...string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		data, _ := os.ReadFile(logPath)
		return fmt.Errorf("%s failed: %w\n%s", name, err, tail(string(data), 20))
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func hashArtifacts(dir string, names ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range names {
		h, err := fileSHA256(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		out[n] = h
	}
	return out, nil
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("parse %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}

func writeManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644)
}

func writeFile(path string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp-" + randHex(4)
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
