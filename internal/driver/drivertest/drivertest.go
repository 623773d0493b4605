// Package drivertest holds what the drivers' tests share: a network
// namespace with a bridge and a tap, a busybox initramfs, a kernel and the
// node image to boot, overlay tars. Only tests import it.
package drivertest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireTool fails under CI=true and skips elsewhere when a tool is missing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, fmt.Sprintf("%s not found (run hack/install-deps.sh)", name))
	}
	return p
}

func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Net is a network namespace made by the test with a bridge and one
// tap on it; nothing of it exists outside the namespace, and it is deleted
// when the test ends.
type Net struct {
	NS, Tap, HostAddr, GuestAddr, Prefix string
}

func NewNet(t testing.TB, name string) Net {
	t.Helper()
	suffix := RandHex(3)
	n := Net{NS: "kltest-" + name + "-" + suffix, Tap: "kltap0"}
	third := 1 + int(suffix[1])%200
	n.Prefix = fmt.Sprintf("10.214.%d", third)
	n.HostAddr, n.GuestAddr = n.Prefix+".1", n.Prefix+".2"
	if out, err := exec.Command("ip", "netns", "add", n.NS).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.NS, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.NS).Run() })

	// Taps are made in the namespace itself: switch this OS thread into it
	// for the netlink calls, and back.
	err := n.In(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "klbr0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		addr, err := netlink.ParseAddr(n.HostAddr + "/24")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n.Tap}, Mode: netlink.TUNTAP_MODE_TAP}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap: %w", err)
		}
		if err := netlink.LinkSetMaster(tap, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(tap)
	})
	if err != nil {
		t.Fatalf("set up namespace %s: %v", n.NS, err)
	}
	return n
}

// CPIOEntry is one file of a newc initramfs.
type CPIOEntry struct {
	Name string
	Mode uint32 // including the file type bits
	Data []byte
}

// WriteInitramfs writes an uncompressed newc cpio archive (the kernel
// unpacks it as the initramfs).
func WriteInitramfs(path string, entries []CPIOEntry) error {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	write := func(ino int, e CPIOEntry) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.Mode, 0, 0, 1, 0, len(e.Data), 0, 0, 0, 0, len(e.Name)+1, 0)
		b.WriteString(e.Name)
		b.WriteByte(0)
		pad()
		b.Write(e.Data)
		pad()
	}
	for i, e := range entries {
		write(i+1, e)
	}
	write(len(entries)+1, CPIOEntry{Name: "TRAILER!!!"})
	return os.WriteFile(path, b.Bytes(), 0o644)
}

const (
	SIFDIR = 0o040000
	SIFREG = 0o100000
)

// BusyboxInitramfs builds an initramfs whose /init prints the PCI devices
// the VM has and then marker on the serial console, and idles.
func BusyboxInitramfs(t *testing.T, path, marker string) {
	t.Helper()
	bb := RequireTool(t, "busybox")
	f, err := elf.Open(bb)
	if err != nil {
		t.Fatalf("busybox: %v", err)
	}
	static := true
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			static = false
		}
	}
	f.Close()
	if !static {
		Missing(t, bb+" is dynamically linked; install busybox-static")
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	init := `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs dev /dev
for d in /sys/bus/pci/devices/*; do
	echo "pci $(/bin/busybox cat $d/vendor):$(/bin/busybox cat $d/device)" >/dev/ttyS0
done
echo "cmdline $(/bin/busybox cat /proc/cmdline)" >/dev/ttyS0
echo "` + marker + `" >/dev/ttyS0
while :; do /bin/busybox sleep 3600; done
`
	err = WriteInitramfs(path, []CPIOEntry{
		{"bin", SIFDIR | 0o755, nil},
		{"dev", SIFDIR | 0o755, nil},
		{"bin/busybox", SIFREG | 0o755, bin},
		{"init", SIFREG | 0o755, []byte(init)},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// nodeImage finds the newest kubelab node image in the cache
// ($KUBELAB_CACHE/images/<hash>/ with disk.qcow2, vmlinuz, initrd.img).
func NodeImage() (string, error) {
	cache := os.Getenv("KUBELAB_CACHE")
	if cache == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(d, "kubelab")
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "images", "*", "manifest.json"))
	type cand struct {
		dir string
		mod time.Time
	}
	var found []cand
	for _, mf := range dirs {
		dir := filepath.Dir(mf)
		var m struct {
			Kind string `json:"kind"`
		}
		data, err := os.ReadFile(mf)
		if err != nil || json.Unmarshal(data, &m) != nil || m.Kind != "kubelab" {
			continue
		}
		ok := true
		for _, f := range []string{"disk.qcow2", "vmlinuz", "initrd.img"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				ok = false
			}
		}
		if st, err := os.Stat(mf); ok && err == nil {
			found = append(found, cand{dir, st.ModTime()})
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("no kubelab node image in %s/images (build one with `kubelab image build`)", cache)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].mod.After(found[j].mod) })
	return found[0].dir, nil
}

// TestKernel is a kernel to boot the initramfs with: KUBELAB_TEST_KERNEL,
// a cached node image's, the host's, or that of the node image built now
// (on a fresh CI machine this test runs before any image exists).
func TestKernel(t testing.TB) string {
	t.Helper()
	if k := os.Getenv("KUBELAB_TEST_KERNEL"); k != "" {
		return k
	}
	if dir, err := NodeImage(); err == nil {
		return filepath.Join(dir, "vmlinuz")
	}
	if ks, _ := filepath.Glob("/boot/vmlinuz-*"); len(ks) > 0 {
		sort.Strings(ks)
		return ks[len(ks)-1]
	}
	return filepath.Join(EnsureNodeImage(t), "vmlinuz")
}

type TarFile struct {
	Name string
	Mode int64
	Body string
}

// WriteOverlay writes a tar of files; archive/tar output is always a
// multiple of 512 bytes, as a raw disk needs.
func WriteOverlay(path string, files []TarFile) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write([]byte(f.Body)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

// RSSKiB reads VmRSS of a process.
func RSSKiB(pid int) (int, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// In runs fn on an OS thread switched into the namespace: sockets it
// opens stay in the namespace after.
func (n Net) In(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(n.NS)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer func() { _ = netns.Set(orig) }()
	return fn()
}

// Banner connects to addr from inside the namespace and returns the first
// line the server sends.
func (n Net) Banner(addr string) (line string, err error) {
	err = n.In(func() error {
		line, err = n.banner(addr)
		return err
	})
	return line, err
}

func (n Net) banner(addr string) (string, error) {
	var lastErr error
	for i := 0; i < 10; i++ {
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			lastErr = err
			time.Sleep(3 * time.Second)
			continue
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	return "", lastErr
}

// EnsureNodeImage returns the node image built from the newest cached
// components (image.Build reuses a cached image with the same inputs, and
// builds it otherwise: the image package's tests may run after this one),
// else the newest image in the cache.
func EnsureNodeImage(t testing.TB) string {
	t.Helper()
	cache, err := image.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	compDir := os.Getenv("KUBELAB_TEST_COMPONENTS")
	if compDir == "" {
		compDir, err = image.NewestComponents(cache)
	}
	if err == nil {
		RequireTool(t, "mmdebstrap")
		comps, err := image.LoadComponents(compDir)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		built, err := image.Build(context.Background(), image.BuildOptions{Components: comps, CacheDir: cache})
		if err != nil {
			t.Fatalf("build the node image: %v", err)
		}
		t.Logf("node image %s (cached: %v, %.1fs)", built.Dir, built.Cached, time.Since(start).Seconds())
		return built.Dir
	}
	dir, err2 := NodeImage()
	if err2 != nil {
		Missing(t, fmt.Sprintf("no node image and no components to build one: %v; %v", err, err2))
	}
	return dir
}

// LibvirtSocket is the system libvirtd's socket.
const LibvirtSocket = "/run/libvirt/libvirt-sock"

// StartLibvirtd runs virtlogd and libvirtd (the system daemons, with
// Debian's configuration) inside network namespace ns, so the domains'
// QEMU processes see the namespace's taps, and stops both when the test
// ends. A libvirtd already answering on the system socket is an error:
// two daemons would share libvirt's state directories.
func StartLibvirtd(t testing.TB, ns string) { startLibvirtd(t, ns, 0) }

// StartLibvirtdTCP is StartLibvirtd with libvirtd also listening for
// qemu+tcp:// on the namespace's own 127.0.0.1:port, without
// authentication: nothing outside the test's namespace can reach it.
func StartLibvirtdTCP(t testing.TB, ns string, port int) { startLibvirtd(t, ns, port) }

func startLibvirtd(t testing.TB, ns string, tcpPort int) {
	t.Helper()
	for _, tool := range []string{"libvirtd", "virtlogd"} {
		RequireTool(t, tool)
	}
	if out, err := exec.Command("getent", "passwd", "libvirt-qemu").CombinedOutput(); err != nil {
		Missing(t, fmt.Sprintf("no user libvirt-qemu, which libvirtd needs to start (run hack/install-deps.sh): %v %s", err, out))
	}
	if c, err := net.Dial("unix", LibvirtSocket); err == nil {
		c.Close()
		t.Fatalf("a libvirtd already answers on %s; stop it first (the test runs its own inside namespace %s)", LibvirtSocket, ns)
	}
	for _, d := range []string{"/run/libvirt", "/var/log/libvirt", "/var/lib/libvirt"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	configureLibvirtd(t, ns, tcpPort)
	logDir := t.TempDir()
	start := func(name string, args ...string) {
		log, err := os.Create(filepath.Join(logDir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); log.Close(); close(done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				data, _ := os.ReadFile(filepath.Join(logDir, name+".log"))
				t.Logf("%s's log:\n%s", name, Tail(string(data), 40))
			}
		})
	}
	start("virtlogd")
	waitSocket(t, "/run/libvirt/virtlogd-sock")
	if tcpPort != 0 {
		start("libvirtd", "--listen")
	} else {
		start("libvirtd")
	}
	waitSocket(t, LibvirtSocket)
}

// configureLibvirtd gives the test's libvirtd its own /etc/libvirt (ip
// netns exec bind-mounts /etc/netns/<ns>/* over /etc), the host's plus
// QEMU run as root, as kubelab's domains run anyway (static DAC label
// +0:+0). libvirtd checks its cached QEMU capabilities against what the
// run user may open: where /dev/kvm is root's alone (no kvm group, as on
// this build machine) the KVM it probed as root looks gone to
// libvirt-qemu, the cache is invalid on every lookup, and each domain
// definition waits out a new probe, minutes in all (measured 2026-12-03).
func configureLibvirtd(t testing.TB, ns string, tcpPort int) {
	t.Helper()
	root := filepath.Join("/etc/netns", ns)
	t.Cleanup(func() {
		os.RemoveAll(root)
		os.Remove(filepath.Dir(root)) // only when empty: made for this test
	})
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/etc/libvirt", filepath.Join(root, "libvirt")).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc/libvirt for the test's libvirtd: %v\n%s", err, out)
	}
	conf := filepath.Join(root, "libvirt", "qemu.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n# kubelab test: QEMU runs as root, as kubelab's domains do.\nuser = \"root\"\ngroup = \"root\"\n"); err != nil {
		t.Fatal(err)
	}
	if tcpPort == 0 {
		return
	}
	daemon, err := os.OpenFile(filepath.Join(root, "libvirt", "libvirtd.conf"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer daemon.Close()
	listen := fmt.Sprintf("\n# kubelab test: qemu+tcp on the test namespace's loopback.\nlisten_tls = 0\nlisten_tcp = 1\nlisten_addr = \"127.0.0.1\"\ntcp_port = \"%d\"\nauth_tcp = \"none\"\n", tcpPort)
	if _, err := daemon.WriteString(listen); err != nil {
		t.Fatal(err)
	}
}

func waitSocket(t testing.TB, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing answers on %s after 30 s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Golden compares got with the golden file path, rewriting it first when
// update is set (the tests' -update flag).
func Golden(t testing.TB, path, got string, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update if intended):\n%s", path, got)
	}
}

// BusyboxMachine is a small machine for lifecycle tests, in a fresh
// directory: the busybox initramfs printing marker (returned), a 64 MiB
// base image, a 1 GiB node disk, an overlay config disk, and one NIC on
// the test network's tap.
func BusyboxMachine(t *testing.T, tn Net, name, mac string) (driver.Machine, string) {
	t.Helper()
	work := t.TempDir()
	kernel := TestKernel(t)
	initrd := filepath.Join(work, "initramfs.cpio")
	marker := "KLTEST-MARKER-" + RandHex(4)
	BusyboxInitramfs(t, initrd, marker)
	base := filepath.Join(work, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	overlay := filepath.Join(work, "overlay.tar")
	if err := WriteOverlay(overlay, []TarFile{{Name: "etc/hello", Mode: 0o644, Body: "hi\n"}}); err != nil {
		t.Fatal(err)
	}
	return driver.Machine{
		Lab: "kltest", Name: name, Dir: filepath.Join(work, "node"),
		CPUs: 1, MemoryMiB: 256, DiskGiB: 1, BaseImage: base,
		Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1 kltest=" + strings.ToLower(marker),
		MAC: mac, Tap: tn.Tap, Netns: tn.NS,
		Config: driver.Config{Kind: driver.ConfigOverlay, Path: overlay},
	}, marker
}

// BootableDisk writes path, a qcow2 disk that boots on its own through a
// BIOS: one FAT file system over the whole disk (no partition table, as
// on a USB stick) with syslinux in its boot sector, loading kernel and
// initrd with cmdline. It stands in for a downloaded cloud image, which
// boots from its disk in the same way, and is made at test time from
// Debian's syslinux, mtools and dosfstools.
func BootableDisk(t testing.TB, path, kernel, initrd, cmdline string) {
	t.Helper()
	for _, tool := range []string{"syslinux", "mcopy", "mkfs.vfat", "qemu-img"} {
		RequireTool(t, tool)
	}
	work := t.TempDir()
	raw := filepath.Join(work, "disk.raw")
	cfg := filepath.Join(work, "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte("DEFAULT node\nPROMPT 0\nTIMEOUT 0\nLABEL node\n  KERNEL vmlinuz\n  INITRD initrd\n  APPEND "+cmdline+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"mkfs.vfat", "-n", "KLTEST", "-C", raw, "65536"}, // 64 MiB
		{"syslinux", "--install", raw},
		{"mcopy", "-i", raw, kernel, "::vmlinuz"},
		{"mcopy", "-i", raw, initrd, "::initrd"},
		{"mcopy", "-i", raw, cfg, "::syslinux.cfg"},
		{"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("make a bootable disk: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
