package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver/qemu"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/versions"
)

// buildTestImage builds (or takes from the cache) the node image from the
// real components and checks its manifest.
func buildTestImage(t testing.TB) (Built, Components) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("TestBuildAndBoot needs root (mmdebstrap --mode=root, network namespaces)")
		}
		t.Skip("needs root")
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "ip", "ssh", "ssh-keygen"} {
		requireTool(t, tool)
	}
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	compDir := os.Getenv("KUBELAB_TEST_COMPONENTS")
	if compDir == "" {
		compDir, err = NewestComponents(cache)
		if err != nil {
			if ci {
				t.Fatalf("no built components to make the node image from (the CI script builds them first): %v", err)
			}
			t.Skipf("no built components: %v", err)
		}
	}
	comps, err := LoadComponents(compDir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	built, err := Build(context.Background(), BuildOptions{Components: comps, CacheDir: cache, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image build: %.1fs (cached: %v) -> %s", time.Since(start).Seconds(), built.Cached, built.Dir)
	if st, err := os.Stat(filepath.Join(built.Dir, DiskFile)); err == nil {
		t.Logf("image size: qcow2 %d MiB, apparent %d MiB", st.Size()>>20, built.Manifest.ApparentSize>>20)
	}
	for _, f := range []string{DiskFile, KernelFile, InitrdFile} {
		if got, _ := fileSHA256(filepath.Join(built.Dir, f)); got != built.Manifest.Artifacts[f] {
			t.Errorf("manifest sha256 of %s = %s, file has %s", f, built.Manifest.Artifacts[f], got)
		}
	}
	for _, p := range []string{"systemd", "openssh-server", "cloud-init", "linux-image-cloud-amd64"} {
		if built.Manifest.Packages[p] == "" {
			t.Errorf("manifest lacks the version of package %s", p)
		}
	}
	for _, p := range []string{"containerd", "runc", "etcd-server"} {
		if v, ok := built.Manifest.Packages[p]; ok {
			t.Errorf("Debian's %s %s is in the image; kubelab's components replace it", p, v)
		}
	}

	return built, comps
}

// TestBuildAndBoot is the image's definition of done: build the node image
// from the real components, boot it under QEMU inside a network namespace
// with an overlay config disk that starts containerd with the node's real
// configuration, and check over ssh the pinned binaries and that the
// container images are in containerd's store, unpacked, seen by CRI, with
// nothing imported at boot. It logs what each unit cost at boot.
func TestBuildAndBoot(t *testing.T) {
	built, comps := buildTestImage(t)
	want := versions.Default()
	if v := comps.Versions["Kubernetes"]; v != "" {
		want.Kubernetes = v
	}
	if v := comps.Versions["Etcd"]; v != "" {
		want.Etcd = v
	}
	if v := comps.Versions["Pause"]; v != "" {
		want.Pause = v
	}
	if v := comps.Versions["CoreDNS"]; v != "" {
		want.CoreDNS = v
	}
	vm := bootVM(t, built.Dir, true, []string{"containerd.service"}, want)
	refs := []string{want.PauseImage(), want.CoreDNSImage(), versions.TestImage}
	checks := []struct{ cmd, want string }{
		{"systemctl is-active containerd", "active"},
		{"kubelet --version", "Kubernetes " + want.Kubernetes},
		{"kube-apiserver --version", "Kubernetes " + want.Kubernetes},
		{"etcd --version", "etcd Version: " + strings.TrimPrefix(want.Etcd, "v")},
		{"hostname", "kltest-node"},
		{"ls /etc/ssh/ssh_host_*_key", "/etc/ssh/ssh_host_ed25519_key"},
		{"stat -fc %T /sys/fs/cgroup", "cgroup2fs"},
		// The images came with the image: the import service had nothing
		// to do and was skipped without running.
		{"systemctl show -p ConditionResult kubelab-images", "ConditionResult=no"},
		{"systemctl show -p ExecMainStartTimestampMonotonic kubelab-images", "ExecMainStartTimestampMonotonic=0"},
		{"test -z \"$(ls -A " + versions.NodeImagesDir + ")\" && echo no tarballs", "no tarballs"},
	}
	for _, c := range checks {
		out, err := vm.ssh(c.cmd)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v\n got: %s\nwant: %s", c.cmd, err, out, c.want)
		}
	}
	if out, _ := vm.ssh("journalctl -b -o cat -u kubelab-images"); strings.Contains(out, "importing") {
		t.Errorf("kubelab-images imported something at boot:\n%s", out)
	}
	// Complete and unpacked for the snapshotter the node's containerd
	// configuration names, under the names it uses.
	if out, err := vm.ssh("ctr -n k8s.io images check --snapshotter overlayfs; ctr -n k8s.io snapshots --snapshotter overlayfs ls"); err != nil {
		t.Errorf("ctr images check: %v\n%s", err, out)
	} else {
		t.Logf("containerd's store on the node:\n%s", out)
		for _, ref := range refs {
			if !regexpLine(out, ref, "complete", "true") {
				t.Errorf("%s not complete and unpacked (overlayfs) on the node", ref)
			}
		}
	}
	// CRI's view, which is what kubelet asks before it would pull: every
	// image there, the sandbox image pinned.
	if out, err := vm.ssh("crictl --runtime-endpoint unix:///run/containerd/containerd.sock --image-endpoint unix:///run/containerd/containerd.sock images -o json 2>/dev/null"); err != nil {
		t.Errorf("crictl images: %v\n%s", err, out)
	} else {
		var list struct {
			Images []struct {
				RepoTags []string `json:"repoTags"`
				Pinned   bool     `json:"pinned"`
			} `json:"images"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Errorf("crictl images -o json: %v\n%s", err, out)
		}
		pinned := map[string]bool{}
		for _, im := range list.Images {
			for _, tag := range im.RepoTags {
				pinned[tag] = im.Pinned
			}
		}
		for _, ref := range refs {
			p, ok := pinned[ref]
			if !ok {
				t.Errorf("CRI does not list %s:\n%s", ref, out)
			} else if p != (ref == want.PauseImage()) {
				t.Errorf("CRI: %s pinned = %v", ref, p)
			}
		}
	}
	logBootCost(t, vm, "containerd.service", "kubelab-images.service")
	// The unpacked layers work after the trip through mkfs.ext4: a
	// container runs from them.
	if out, err := vm.ssh("ctr -n k8s.io run --rm " + versions.TestImage + " kltest-run sh -c 'echo hello from $(id -un)'"); err != nil || !strings.Contains(out, "hello from root") {
		t.Errorf("container from the preloaded test image: %v\n%s", err, out)
	}
	// The service still imports a tarball a user adds: the test image,
	// removed from the store first, comes back from its tarball.
	var tarball string
	for _, im := range comps.Images {
		if im.Ref == versions.TestImage {
			tarball = filepath.Join(comps.Dir, im.File)
		}
	}
	if out, err := vm.ssh("ctr -n k8s.io images rm " + versions.TestImage); err != nil {
		t.Errorf("remove the test image: %v\n%s", err, out)
	}
	if out, err := vm.sshIn(tarball, "cat >"+versions.NodeImagesDir+"/kltest.tar"); err != nil {
		t.Errorf("copy a tarball to the node: %v\n%s", err, out)
	}
	if out, err := vm.ssh("systemctl restart kubelab-images; ctr -n k8s.io images check -q --snapshotter overlayfs; " +
		"journalctl -b -o cat -u kubelab-images"); err != nil ||
		!strings.Contains(out, versions.TestImage+"\n") || !strings.Contains(out, "importing kltest.tar") {
		t.Errorf("import of a tarball added later: %v\n%s", err, out)
	}
	// The overlay supplied one host key; none may have been generated.
	if out, _ := vm.ssh("ls /etc/ssh/"); strings.Contains(out, "ssh_host_rsa_key") {
		t.Errorf("host keys were generated although the overlay provided one:\n%s", out)
	}
	if out, _ := vm.ssh("systemctl --failed --no-legend"); strings.TrimSpace(out) != "" {
		t.Errorf("failed units on the node:\n%s", out)
	}
	if t.Failed() {
		vm.dumpConsole()
	}
}

// TestBootOverlayVariants boots the image with an overlay that enables
// nothing, with cloud-init off (the overlay path's command line) and left
// on without a cidata disk: both must come up with the overlay's network,
// hostname and host key, and no cloud-init fallback. Boot times are logged.
func TestBootOverlayVariants(t *testing.T) {
	built, _ := buildTestImage(t)
	for _, tt := range []struct {
		name        string
		noCloudInit bool
		cloudInit   string
	}{
		{"cloud-init disabled", true, "disabled"},
		{"cloud-init enabled without cidata", false, "DataSourceNone"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vm := bootVM(t, built.Dir, tt.noCloudInit, nil, versions.Default())
			for _, c := range []struct{ cmd, want string }{
				{"hostname", "kltest-node"},
				{"ls /etc/systemd/network/", "10-eth0.network"},
				{"timeout 120 cloud-init status --wait --long || true", tt.cloudInit}, // --wait: the marker may come before modules-final ends
				{"ls /etc/ssh/ssh_host_*_key", "/etc/ssh/ssh_host_ed25519_key"},
				{"systemctl is-active kubelab-overlay systemd-networkd ssh", "active\nactive\nactive"},
			} {
				out, err := vm.ssh(c.cmd)
				if err != nil || !strings.Contains(out, c.want) {
					t.Errorf("%s: %v\n got: %s\nwant: %s", c.cmd, err, out, c.want)
				}
			}
			// What the image masks or marks up to date did not run.
			if out, _ := vm.ssh("systemctl show -p ConditionResult systemd-sysusers"); !strings.Contains(out, "ConditionResult=no") {
				t.Errorf("systemd-sysusers ran at boot (/etc/.updated not honoured): %s", out)
			}
			notRun := append([]string{"modprobe@loop.service", "modprobe@dm_mod.service", "modprobe@configfs.service",
				"modprobe@fuse.service", "modprobe@efi_pstore.service"}, maskedUnits...)
			out, err := vm.ssh("for u in " + strings.Join(notRun, " ") + "; do echo $u $(systemctl show -p InactiveExitTimestampMonotonic --value $u); done")
			if err != nil {
				t.Errorf("masked units: %v\n%s", err, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasSuffix(line, " 0") {
					t.Errorf("started at boot although masked or not wanted: %s", line)
				}
			}
			if out, _ := vm.ssh("ls /etc/systemd/network/ /etc/ssh/"); strings.Contains(out, "cloud-init") || strings.Contains(out, "ssh_host_rsa_key") {
				t.Errorf("cloud-init overrode the overlay's network or host keys:\n%s", out)
			}
			if out, _ := vm.ssh("systemctl --failed --no-legend"); strings.TrimSpace(out) != "" {
				t.Errorf("failed units on the node:\n%s", out)
			}
			logBootCost(t, vm)
			if out, err := vm.ssh("journalctl -b -o short-monotonic -u kubelab-overlay | tail -4"); err == nil {
				t.Logf("guest:\n%s", strings.TrimSpace(out))
			}
			if t.Failed() {
				vm.dumpConsole()
			}
		})
	}
}

// logBootCost logs what the boot cost the node: systemd-analyze's split,
// blame and critical chain to the readiness marker, and for the given
// units the time from starting to started. It returns the guest's
// userspace seconds (to the default target) and each unit's seconds to
// started (absent when it did not run).
func logBootCost(t testing.TB, vm *testVM, units ...string) (userspace float64, unitSeconds map[string]float64) {
	t.Helper()
	unitSeconds = map[string]float64{}
	out, err := vm.ssh("systemd-analyze; systemd-analyze blame --no-pager; " +
		"systemd-analyze critical-chain --no-pager kubelab-ready.service")
	if err != nil {
		t.Logf("systemd-analyze: %v\n%s", err, out)
		return 0, unitSeconds
	}
	t.Logf("boot cost:\n%s", strings.TrimSpace(out))
	// "Startup finished in 6.4s (kernel) + 20.5s (userspace) = ..."; a
	// minute shows as "1min 5.8s".
	if _, after, ok := strings.Cut(out, "(kernel) + "); ok {
		if us, _, ok := strings.Cut(after, " (userspace)"); ok {
			userspace = parseSystemdSpan(us)
		}
	}
	for _, u := range units {
		out, err := vm.ssh("systemctl show -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic -p ConditionResult " + u)
		if err != nil {
			t.Logf("%s: %v", u, err)
			continue
		}
		props := map[string]int64{}
		cond := ""
		for _, line := range strings.Split(out, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
			if k == "ConditionResult" {
				cond = v
				continue
			}
			var n int64
			fmt.Sscan(v, &n)
			props[k] = n
		}
		start, up := props["InactiveExitTimestampMonotonic"], props["ActiveEnterTimestampMonotonic"]
		if cond == "no" || start == 0 {
			t.Logf("unit %s: not run (condition %s)", u, cond)
			continue
		}
		unitSeconds[u] = float64(up-start) / 1e6
		t.Logf("unit %s: starting at %.1fs, started after %.2fs", u, float64(start)/1e6, unitSeconds[u])
	}
	return userspace, unitSeconds
}

// parseSystemdSpan reads systemd's "1min 5.838s" or "905ms" as seconds.
func parseSystemdSpan(s string) float64 {
	var total float64
	for _, f := range strings.Fields(s) {
		var v float64
		switch {
		case strings.HasSuffix(f, "min"):
			fmt.Sscan(strings.TrimSuffix(f, "min"), &v)
			v *= 60
		case strings.HasSuffix(f, "ms"):
			fmt.Sscan(strings.TrimSuffix(f, "ms"), &v)
			v /= 1000
		case strings.HasSuffix(f, "s"):
			fmt.Sscan(strings.TrimSuffix(f, "s"), &v)
		}
		total += v
	}
	return total
}

// BenchmarkBoot boots the node image with an overlay, bare (what every
// node pays) and as a worker (containerd with the node's configuration,
// started at boot), and reports the seconds from QEMU's start to the
// readiness marker, the host CPU seconds QEMU used until then (what other
// load on the host disturbs least), the guest's userspace seconds and, for
// the worker, what containerd and the image import took to start. One boot
// per run:
// go test -run '^$' -bench Boot -benchtime 1x -count 3 ./internal/image
func BenchmarkBoot(b *testing.B) {
	built, comps := buildTestImage(b)
	vs := versions.Default()
	if v := comps.Versions["Pause"]; v != "" {
		vs.Pause = v
	}
	for _, bc := range []struct {
		name   string
		enable []string
	}{{"bare", nil}, {"worker", []string{"containerd.service"}}} {
		b.Run(bc.name, func(b *testing.B) {
			var ready, cpu, userspace, ctrd, imports float64
			for i := 0; i < b.N; i++ {
				vm := bootVM(b, built.Dir, true, bc.enable, vs)
				us, units := logBootCost(b, vm, "containerd.service", "kubelab-images.service")
				vm.stop()
				ready += vm.bootSeconds
				cpu += vm.bootCPUSeconds
				userspace += us
				ctrd += units["containerd.service"]
				imports += units["kubelab-images.service"]
			}
			n := float64(b.N)
			b.ReportMetric(ready/n, "s-to-ready")
			b.ReportMetric(cpu/n, "cpu-s-to-ready")
			b.ReportMetric(userspace/n, "s-userspace")
			if bc.enable != nil {
				b.ReportMetric(ctrd/n, "s-containerd")
				b.ReportMetric(imports/n, "s-import")
			}
		})
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type testVM struct {
	t       testing.TB
	ns      string
	addr    string
	key     string
	known   string
	console string
	stop    func()
	// bootSeconds is the time from QEMU's start to the readiness marker;
	// bootCPUSeconds the host CPU time QEMU used until then, which other
	// load on the host inflates much less than the wall time.
	bootSeconds, bootCPUSeconds float64
}

// ssh runs command on the node. The readiness marker only says ssh and
// containerd started: on a bare node nothing waits for network-online, so
// on a loaded host eth0 may get its address a little later; failures to
// connect are retried for a minute.
func (vm *testVM) ssh(command string) (string, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", vm.ns, "ssh", "-i", vm.key,
			"-o", "UserKnownHostsFile="+vm.known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
			"-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@"+vm.addr, command)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "ssh: connect to host") || time.Now().After(deadline) {
			return string(out), err
		}
		time.Sleep(2 * time.Second)
	}
}

// sshIn runs command with the file's content as its standard input.
func (vm *testVM) sshIn(file, command string) (string, error) {
	in, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", vm.ns, "ssh", "-i", vm.key,
		"-o", "UserKnownHostsFile="+vm.known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@"+vm.addr, command)
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (vm *testVM) dumpConsole() {
	data, _ := os.ReadFile(vm.console)
	vm.t.Logf("console tail:\n%s", tail(string(data), 80))
}

// bootVM boots the image with an overlay config disk inside a fresh network
// namespace and waits for the readiness marker. Everything is torn down when
// the test ends, failed or not.
// The node gets containerd with the configuration a worker of versions vs
// gets (started only when enable names it).
func bootVM(t testing.TB, imageDir string, noCloudInit bool, enable []string, vs versions.Set) *testVM {
	t.Helper()
	dir := t.TempDir()
	suffix := randHex(3)
	ns := "kltest-" + suffix
	// A /24 unlikely to collide with anything; it only exists in the namespace.
	subnet := fmt.Sprintf("10.213.%d", 1+int(suffix[0])%200)
	vm := &testVM{t: t, ns: ns, addr: subnet + ".2", key: filepath.Join(dir, "id_ed25519"),
		known: filepath.Join(dir, "known_hosts"), console: filepath.Join(dir, "console.log")}

	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
	run("ip", "-n", ns, "addr", "add", subnet+".1/24", "dev", "br0")
	run("ip", "-n", ns, "link", "set", "br0", "up")
	run("ip", "-n", ns, "tuntap", "add", "tap0", "mode", "tap")
	run("ip", "-n", ns, "link", "set", "tap0", "master", "br0", "up")

	// Keys made at test time: the client key and the node's host key.
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kltest", "-f", vm.key)
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@kltest-node", "-f", hostKey)
	clientPub, _ := os.ReadFile(vm.key + ".pub")
	hostPriv, _ := os.ReadFile(hostKey)
	hostPub, _ := os.ReadFile(hostKey + ".pub")
	fields := strings.Fields(string(hostPub))
	if err := os.WriteFile(vm.known, []byte(vm.addr+" "+fields[0]+" "+fields[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	meta, _ := json.Marshal(map[string]any{"enable": enable, "mask": []string{}, "hostname": "kltest-node"})
	overlay := []tarEntry{
		{"etc/systemd/network/10-eth0.network", 0o644, fmt.Sprintf(
			"[Match]\nName=eth0\n\n[Network]\nAddress=%s/24\nGateway=%s.1\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n", vm.addr, subnet)},
		{"etc/ssh/ssh_host_ed25519_key", 0o600, string(hostPriv)},
		{"etc/ssh/ssh_host_ed25519_key.pub", 0o644, string(hostPub)},
		{"root/.ssh/", 0o700, ""},
		{"root/.ssh/authorized_keys", 0o600, string(clientPub)},
		{strings.TrimPrefix(nodeconfig.ContainerdConf, "/"), 0o644, nodeconfig.ContainerdConfig(vs)},
		{"etc/systemd/system/containerd.service", 0o644, containerdUnit},
		{"etc/kubelab/overlay.json", 0o644, string(meta)},
	}
	configTar := filepath.Join(dir, "config.tar")
	if err := writeTar(configTar, overlay); err != nil {
		t.Fatal(err)
	}

	disk := filepath.Join(dir, "node.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(imageDir, DiskFile), "-F", "qcow2", disk, "10G")
	m, err := ReadManifest(imageDir)
	if err != nil {
		t.Fatal(err)
	}
	// KVM where a guest really runs under it (the QEMU driver's probe),
	// TCG otherwise; KUBELAB_ACCEL=kvm|tcg forces one.
	accelName, err := qemu.New(qemu.Options{Accel: os.Getenv("KUBELAB_ACCEL")}).Accelerator(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	accel, cpu := "tcg,tb-size=256", "max"
	if accelName == qemu.AccelKVM {
		accel, cpu = "kvm", "host"
	}
	cmdline := m.KernelCmdline
	if noCloudInit {
		cmdline += " " + m.KernelCmdlineNoCloudInit
	}
	pidfile := filepath.Join(dir, "qemu.pid")
	args := []string{"netns", "exec", ns, "qemu-system-x86_64",
		"-accel", accel, "-cpu", cpu, "-smp", "1", "-m", "1024",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", filepath.Join(imageDir, KernelFile), "-initrd", filepath.Join(imageDir, InitrdFile),
		"-append", cmdline,
		"-drive", "file=" + qemuEscape(disk) + ",if=none,id=root,format=qcow2",
		"-device", "virtio-blk-pci,drive=root",
		"-drive", "file=" + qemuEscape(configTar) + ",if=none,id=cfg,format=raw,readonly=on",
		"-device", "virtio-blk-pci,drive=cfg,serial=" + versions.NodeConfigDisk,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:4e:31:02",
		"-device", "virtio-rng-pci",
		"-serial", "file:" + vm.console,
		"-pidfile", pidfile,
	}
	qemu := exec.Command("ip", args...)
	var qemuOut bytes.Buffer
	qemu.Stdout, qemu.Stderr = &qemuOut, &qemuOut
	bootStart := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- qemu.Wait() }()
	var stopped bool
	vm.stop = func() {
		if !stopped {
			stopped = true
			_ = qemu.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(vm.stop)

	marker := versions.ReadyMarker + " kltest-node"
	deadline := time.After(8 * time.Minute)
	for {
		data, _ := os.ReadFile(vm.console)
		if bytes.Contains(data, []byte(marker)) {
			vm.bootSeconds = time.Since(bootStart).Seconds()
			vm.bootCPUSeconds = cpuSeconds(qemu.Process.Pid)
			t.Logf("boot to readiness marker (%s, cmdline %q): %.1fs, QEMU CPU %.1fs", accel, cmdline, vm.bootSeconds, vm.bootCPUSeconds)
			return vm
		}
		select {
		case err := <-exited:
			exited <- err
			vm.dumpConsole()
			t.Fatalf("qemu exited before the node was ready: %v\n%s", err, qemuOut.String())
		case <-deadline:
			vm.dumpConsole()
			t.Fatalf("no %q on the console after 8 minutes", marker)
		case <-time.After(time.Second):
		}
	}
}

// cpuSeconds is the user+system CPU time of a process (ip netns exec
// execs QEMU, so the child's pid is QEMU's).
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the parenthesised command name; utime and stime
	// are the 14th and 15th fields of the whole line, in clock ticks.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime float64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return (utime + stime) / 100 // USER_HZ
}

// qemuEscape doubles commas, QEMU's option separator, in a path.
func qemuEscape(p string) string { return strings.ReplaceAll(p, ",", ",,") }

type tarEntry struct {
	name string
	mode int64
	body string
}

// writeTar writes a tar padded to 512 bytes, as a raw virtio disk needs.
func writeTar(path string, entries []tarEntry) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), Typeflag: tar.TypeReg,
			ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if pad := buf.Len() % 512; pad != 0 {
		buf.Write(make([]byte, 512-pad))
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

const containerdUnit = `[Unit]
Description=containerd container runtime
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=` + versions.NodeBinDir + `/containerd --config ` + nodeconfig.ContainerdConf + `
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`
