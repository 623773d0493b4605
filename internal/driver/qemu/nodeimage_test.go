package qemu

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/render/cloudinit"
	"github.com/kubelab/kubelab/internal/versions"
)

// TestNodeImage boots kubelab's node image through the driver, configured
// by an overlay config disk (kubelab's own way) and by a cloud-init cidata
// ISO: readiness marker with the hostname the configuration set, the node
// answers on the tap's network, ACPI powerdown stops it cleanly,
// Reprovision gives it a fresh disk. The overlay node runs containerd with
// a worker's configuration and reports on its console that the container
// images came with the image: complete and unpacked, nothing imported at
// boot. It logs the boot time to the marker and the idle QEMU RSS.
func TestNodeImage(t *testing.T) {
	requireVMs(t)
	img := drivertest.EnsureNodeImage(t)
	manifest, err := image.ReadManifest(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("overlay", func(t *testing.T) {
		config, verify := workerOverlay(t, manifest)
		bootNodeImage(t, img, config, verify)
	})
	t.Run("cloud-init", func(t *testing.T) {
		bootNodeImage(t, img, func(tn drivertest.Net, work, host string) (driver.Config, string) {
			dir := filepath.Join(work, "cloud-init")
			files := map[string]string{
				cloudinit.MetaData: "instance-id: " + host + "\nlocal-hostname: " + host + "\n",
				cloudinit.UserData: "#cloud-config\nhostname: " + host + "\n",
				// The shape render/cloudinit writes (bookworm's cloud-init 22.4
				// does not know "to: default").
				cloudinit.NetworkConfig: fmt.Sprintf("version: 2\nethernets:\n  eth0:\n    match: {macaddress: '%s'}\n    set-name: eth0\n    addresses: [%s/24]\n    routes: [{to: 0.0.0.0/0, via: %s}]\n",
					testMAC, tn.GuestAddr, tn.HostAddr),
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			for name, body := range files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			return driver.Config{Kind: driver.ConfigCloudInit, Path: dir}, manifest.KernelCmdline
		}, nil)
	})
}

const testMAC = "52:54:00:4e:31:02"

// bootNodeImage runs one node through the whole lifecycle; config makes its
// configuration medium and kernel command line; verify, if set, checks the
// console once the node is ready.
func bootNodeImage(t testing.TB, img string, config func(tn drivertest.Net, work, host string) (driver.Config, string),
	verify func(t testing.TB, console string)) (bootSeconds float64, rssMiB int) {
	tn := drivertest.NewNet(t, "qemu")
	work := t.TempDir()
	host := "kltest-" + strings.ReplaceAll(filepath.Base(t.Name()), "-", "")
	cfg, cmdline := config(tn, work, host)
	m := driver.Machine{
		Lab: "kltest", Name: "node-" + drivertest.RandHex(2), Dir: filepath.Join(work, "node"),
		CPUs: 1, MemoryMiB: 1024, DiskGiB: 10,
		BaseImage: filepath.Join(img, "disk.qcow2"),
		Kernel:    filepath.Join(img, "vmlinuz"), Initrd: filepath.Join(img, "initrd.img"),
		Cmdline: cmdline,
		MAC:     testMAC, Tap: tn.Tap, Netns: tn.NS,
		Config: cfg,
	}
	d := New(Options{})
	cleanupMachine(t, d, m)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	accel, err := d.Accelerator(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The console goes with Delete: show it on failure before that.
	dumped := false
	dumpConsole := func() {
		if t.Failed() && !dumped {
			dumped = true
			data, _ := os.ReadFile(d.ConsolePath(m))
			lines := strings.Split(string(data), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			t.Logf("console tail:\n%s", strings.Join(lines, "\n"))
		}
	}
	defer dumpConsole()

	t0 := time.Now()
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("create (disk overlay, config medium): %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	if err := d.Start(ctx, m); err != nil {
		t.Fatal(err)
	}
	marker := versions.ReadyMarker + " " + host
	if err := driver.WaitConsole(ctx, d.ConsolePath(m), 0, marker, func() bool { return d.PID(m) != 0 }); err != nil {
		t.Fatal(err)
	}
	bootSeconds = time.Since(t0).Seconds()
	t.Logf("node image boot to %q (%s): %.1fs", marker, accel, bootSeconds)
	mustState(t, d, m, driver.StateRunning)
	if verify != nil {
		data, err := os.ReadFile(d.ConsolePath(m))
		if err != nil {
			t.Fatal(err)
		}
		verify(t, string(data))
	}

	// The NIC works: the node's sshd answers inside the test's namespace.
	if banner, err := tn.Banner(tn.GuestAddr + ":22"); err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Errorf("ssh banner of %s in %s: %q, %v", tn.GuestAddr, tn.NS, banner, err)
	}

	time.Sleep(15 * time.Second) // let the boot settle before measuring
	if rss, err := drivertest.RSSKiB(d.PID(m)); err == nil {
		rssMiB = rss >> 10
		t.Logf("QEMU RSS, idle node (%s, %d MiB guest): %d MiB", accel, m.MemoryMiB, rssMiB)
	}

	t0 = time.Now()
	if err := d.Stop(ctx, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop via ACPI powerdown: %.1fs", time.Since(t0).Seconds())
	mustState(t, d, m, driver.StateStopped)
	if data, _ := os.ReadFile(d.ConsolePath(m)); !strings.Contains(string(data), "reboot: Power down") {
		t.Error("the guest did not power itself down (no 'reboot: Power down' on the console): Stop had to kill it")
	}

	disk := filepath.Join(m.Dir, DiskFile)
	before, _ := os.Stat(disk)
	if err := d.Reprovision(ctx, m); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("disk overlay: %d KiB after a boot, %d KiB reprovisioned", before.Size()>>10, after.Size()>>10)
	if after.Size() >= before.Size() || after.Size() > 1<<20 {
		t.Errorf("Reprovision did not give a fresh overlay: %d -> %d bytes", before.Size(), after.Size())
	}
	dumpConsole()
	if err := d.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		t.Errorf("Delete left %s", m.Dir)
	}
	return bootSeconds, rssMiB
}

// overlayConfig is the overlay-disk configuration of a test node.
func overlayConfig(t testing.TB, manifest image.Manifest) func(tn drivertest.Net, work, host string) (driver.Config, string) {
	return func(tn drivertest.Net, work, host string) (driver.Config, string) {
		overlay := filepath.Join(work, "overlay.tar")
		err := drivertest.WriteOverlay(overlay, []drivertest.TarFile{
			{Name: "etc/systemd/network/10-eth0.network", Mode: 0o644, Body: fmt.Sprintf(
				"[Match]\nName=eth0\n\n[Network]\nAddress=%s/24\nGateway=%s\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n", tn.GuestAddr, tn.HostAddr)},
			{Name: "etc/kubelab/overlay.json", Mode: 0o644, Body: `{"enable":[],"mask":[],"hostname":"` + host + `"}`},
		})
		if err != nil {
			t.Fatal(err)
		}
		// The command line the image's manifest recommends for overlay nodes.
		return driver.Config{Kind: driver.ConfigOverlay, Path: overlay}, manifest.KernelCmdline + " " + manifest.KernelCmdlineNoCloudInit
	}
}

// workerOverlay is overlayConfig plus containerd with a worker's
// configuration (nodeconfig's) and a unit that writes, before the readiness
// marker, what containerd holds on the console: each image that is
// complete and unpacked for overlayfs, and whether kubelab-images ran.
// verify checks that console.
func workerOverlay(t testing.TB, manifest image.Manifest) (config func(tn drivertest.Net, work, host string) (driver.Config, string), verify func(t testing.TB, console string)) {
	vs := versions.Default()
	if p := manifest.Components["Pause"]; p != "" {
		vs.Pause = p
	}
	if c := manifest.Components["CoreDNS"]; c != "" {
		vs.CoreDNS = c
	}
	config = func(tn drivertest.Net, work, host string) (driver.Config, string) {
		overlay := filepath.Join(work, "overlay.tar")
		err := drivertest.WriteOverlay(overlay, []drivertest.TarFile{
			{Name: "etc/systemd/network/10-eth0.network", Mode: 0o644, Body: fmt.Sprintf(
				"[Match]\nName=eth0\n\n[Network]\nAddress=%s/24\nGateway=%s\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n", tn.GuestAddr, tn.HostAddr)},
			{Name: strings.TrimPrefix(nodeconfig.ContainerdConf, "/"), Mode: 0o644, Body: nodeconfig.ContainerdConfig(vs)},
			{Name: "etc/systemd/system/containerd.service", Mode: 0o644, Body: "[Unit]\nAfter=network.target local-fs.target\n\n[Service]\n" +
				"ExecStartPre=-/sbin/modprobe overlay\nExecStart=" + versions.NodeBinDir + "/containerd --config " + nodeconfig.ContainerdConf +
				"\nType=notify\nDelegate=yes\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"},
			{Name: "usr/local/lib/kltest-images", Mode: 0o755, Body: `#!/bin/sh
ctr -n k8s.io images check -q --snapshotter overlayfs | sed 's/^/KLTEST-UNPACKED /' >/dev/ttyS0
echo "KLTEST-IMPORT-SERVICE $(systemctl show -p ConditionResult -p ExecMainStartTimestampMonotonic kubelab-images | sort | tr '\n' ' ')" >/dev/ttyS0
`},
			{Name: "etc/systemd/system/kltest-images.service", Mode: 0o644, Body: "[Unit]\nRequires=containerd.service\n" +
				"After=containerd.service kubelab-images.service\nBefore=kubelab-ready.service\n\n" +
				"[Service]\nType=oneshot\nExecStart=/usr/local/lib/kltest-images\n\n[Install]\nWantedBy=multi-user.target\n"},
			{Name: "etc/kubelab/overlay.json", Mode: 0o644, Body: `{"enable":["containerd.service","kltest-images.service"],"mask":[],"hostname":"` + host + `"}`},
		})
		if err != nil {
			t.Fatal(err)
		}
		return driver.Config{Kind: driver.ConfigOverlay, Path: overlay}, manifest.KernelCmdline + " " + manifest.KernelCmdlineNoCloudInit
	}
	verify = func(t testing.TB, console string) {
		t.Helper()
		unpacked := map[string]bool{}
		service := ""
		for _, line := range strings.Split(console, "\n") {
			line = strings.TrimSpace(line)
			if ref, ok := strings.CutPrefix(line, "KLTEST-UNPACKED "); ok {
				unpacked[ref] = true
			}
			if s, ok := strings.CutPrefix(line, "KLTEST-IMPORT-SERVICE "); ok {
				service = s
			}
		}
		for _, ref := range []string{vs.PauseImage(), vs.CoreDNSImage(), versions.TestImage} {
			if !unpacked[ref] {
				t.Errorf("%s is not complete and unpacked (overlayfs) in the node's containerd; unpacked: %v", ref, unpacked)
			}
		}
		// Skipped by its condition: never started, nothing imported.
		if want := "ConditionResult=no ExecMainStartTimestampMonotonic=0"; !strings.Contains(service, want) {
			t.Errorf("kubelab-images at boot: %q, want %q", service, want)
		}
	}
	return config, verify
}

// BenchmarkNodeBoot reports the time from Start to the readiness marker of
// kubelab's node image with an overlay disk, and QEMU's idle RSS:
// go test -run '^$' -bench NodeBoot -benchtime 1x ./internal/driver/qemu
func BenchmarkNodeBoot(b *testing.B) {
	requireVMs(b)
	img := drivertest.EnsureNodeImage(b)
	manifest, err := image.ReadManifest(img)
	if err != nil {
		b.Fatal(err)
	}
	var secs float64
	var rss int
	for i := 0; i < b.N; i++ {
		s, r := bootNodeImage(b, img, overlayConfig(b, manifest), nil)
		secs += s
		rss += r
	}
	b.ReportMetric(secs/float64(b.N), "s-to-ready")
	b.ReportMetric(float64(rss)/float64(b.N), "MiB-rss")
}

// TestNodeTemplate makes a template from kubelab's node image and starts
// two nodes from it, one after the other, each with a worker's overlay:
// each resumes the saved guest instead of booting, applies its own
// configuration (hostname, MAC, network, containerd with the pre-loaded
// images), answers on its tap, and has its own machine id and random
// numbers and the host's time. The template's files stay untouched, and a
// node made from it boots normally from its own disk after a stop.
func TestNodeTemplate(t *testing.T) {
	requireVMs(t)
	img := drivertest.EnsureNodeImage(t)
	manifest, err := image.ReadManifest(img)
	if err != nil {
		t.Fatal(err)
	}
	if manifest.KernelCmdlineTemplate == "" {
		t.Fatalf("image %s does not support templates (no kernel_cmdline_template in its manifest)", img)
	}
	d := New(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	work := t.TempDir()
	cmdline := manifest.KernelCmdline + " " + manifest.KernelCmdlineNoCloudInit
	tm := driver.Machine{
		Lab: "kltest", Name: "template-" + drivertest.RandHex(2), Dir: filepath.Join(work, "template"),
		CPUs: 1, MemoryMiB: 1024, DiskGiB: 10,
		BaseImage: filepath.Join(img, "disk.qcow2"),
		Kernel:    filepath.Join(img, "vmlinuz"), Initrd: filepath.Join(img, "initrd.img"),
		Cmdline: cmdline + " " + manifest.KernelCmdlineTemplate,
		MAC:     "02:00:00:00:00:01",
		Config:  driver.Config{Kind: driver.ConfigOverlay},
	}
	t.Cleanup(func() {
		if pid, alive := d.process(tm); alive {
			_ = d.kill(context.Background(), tm, pid)
		}
	})
	t0 := time.Now()
	if err := d.MakeTemplate(ctx, tm, versions.TemplateMarker); err != nil {
		t.Fatal(err)
	}
	t.Logf("template made in %.1fs", time.Since(t0).Seconds())
	if !d.HasTemplate(tm) {
		t.Fatal("HasTemplate is false after MakeTemplate")
	}
	for _, f := range []string{StateFile, DiskFile, TemplateConfigFile} {
		if st, err := os.Stat(filepath.Join(tm.Dir, f)); err != nil {
			t.Fatal(err)
		} else if st.Mode().Perm() != 0o600 {
			t.Errorf("template %s is mode %v, want 0600 (guest memory)", f, st.Mode().Perm())
		}
	}
	templateDisk, _ := os.Stat(filepath.Join(tm.Dir, DiskFile))
	// Made already: kept as it is.
	t0 = time.Now()
	if err := d.MakeTemplate(ctx, tm, versions.TemplateMarker); err != nil || time.Since(t0) > 5*time.Second {
		t.Fatalf("MakeTemplate of a complete template: %v after %v", err, time.Since(t0))
	}

	config, verifyImages := workerOverlay(t, manifest)
	type seen struct{ machineID, random string }
	var nodes []seen
	for i := 0; i < 2; i++ {
		tn := drivertest.NewNet(t, "qemu")
		host := fmt.Sprintf("kltest-tmpl%d", i)
		nodeWork := filepath.Join(work, host)
		if err := os.MkdirAll(nodeWork, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg, _ := config(tn, nodeWork, host)
		// What the node prints once configured: its clock, machine id and
		// a first random draw; and the network matched by MAC, as
		// kubelab's nodes have it.
		mac := fmt.Sprintf("52:54:00:4e:32:%02x", i+1)
		extra := []drivertest.TarFile{
			{Name: "etc/systemd/network/10-eth0.network", Mode: 0o644, Body: fmt.Sprintf(
				"[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s/24\nGateway=%s\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n", mac, tn.GuestAddr, tn.HostAddr)},
			{Name: "usr/local/lib/kltest-identity", Mode: 0o755, Body: "#!/bin/sh\n" +
				"echo \"KLTEST-IDENTITY $(date -u +%s) $(cat /etc/machine-id) $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n') $(cat /sys/class/net/eth0/address)\" >/dev/ttyS0\n"},
			{Name: "etc/systemd/system/kltest-identity.service", Mode: 0o644, Body: "[Unit]\nBefore=kubelab-ready.service\n\n" +
				"[Service]\nType=oneshot\nExecStart=/usr/local/lib/kltest-identity\n\n[Install]\nWantedBy=multi-user.target\n"},
		}
		if err := mergeOverlay(cfg.Path, extra, "kltest-identity.service"); err != nil {
			t.Fatal(err)
		}
		m := driver.Machine{
			Lab: "kltest", Name: host, Dir: filepath.Join(nodeWork, "node"),
			CPUs: tm.CPUs, MemoryMiB: tm.MemoryMiB, DiskGiB: tm.DiskGiB,
			BaseImage: tm.BaseImage, Kernel: tm.Kernel, Initrd: tm.Initrd, Cmdline: cmdline,
			MAC: mac, Tap: tn.Tap, Netns: tn.NS, Config: cfg, Template: tm.Dir,
		}
		cleanupMachine(t, d, m)
		t0 = time.Now()
		if err := d.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: create from the template: %v", host, time.Since(t0).Round(time.Millisecond))
		t0 = time.Now()
		if err := d.Start(ctx, m); err != nil {
			t.Fatal(err)
		}
		marker := versions.ReadyMarker + " " + host
		if err := driver.WaitConsole(ctx, d.ConsolePath(m), 0, marker, func() bool { return d.PID(m) != 0 }); err != nil {
			data, _ := os.ReadFile(d.ConsolePath(m))
			t.Fatalf("%s: %v\nconsole:\n%s", host, err, data)
		}
		ready := time.Now()
		t.Logf("%s: start from the template to %q: %.1fs", host, marker, ready.Sub(t0).Seconds())
		data, _ := os.ReadFile(d.ConsolePath(m))
		console := string(data)
		if strings.Contains(console, "Linux version") {
			t.Errorf("%s booted a kernel instead of resuming the template", host)
		}
		verifyImages(t, console)
		// The guest reseeded its random number generator from the host's.
		if !strings.Contains(console, "random number generator reseeded from the host") {
			t.Errorf("%s: the guest did not report reseeding its random number generator", host)
		}
		var id seen
		var clock int64
		var nicMAC string
		for _, line := range strings.Split(console, "\n") {
			if f := strings.Fields(strings.TrimSpace(line)); len(f) == 5 && f[0] == "KLTEST-IDENTITY" {
				fmt.Sscan(f[1], &clock)
				id = seen{machineID: f[2], random: f[3]}
				nicMAC = f[4]
			}
		}
		if id.machineID == "" {
			t.Fatalf("%s: no KLTEST-IDENTITY line on the console:\n%s", host, console)
		}
		if skew := ready.Unix() - clock; skew < -5 || skew > 120 {
			t.Errorf("%s: guest clock %d is %d s behind the host at ready (the template's time was not replaced)", host, clock, skew)
		}
		if nicMAC != mac {
			t.Errorf("%s: eth0 has MAC %s, want %s", host, nicMAC, mac)
		}
		for _, other := range nodes {
			if other.machineID == id.machineID {
				t.Errorf("%s: machine id %s is another node's from the same template", host, id.machineID)
			}
			if other.random == id.random {
				t.Errorf("%s: first random draw %s equals another node's: the RNG was not reseeded", host, id.random)
			}
		}
		nodes = append(nodes, id)
		if banner, err := tn.Banner(tn.GuestAddr + ":22"); err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
			t.Errorf("%s: ssh banner of %s: %q, %v", host, tn.GuestAddr, banner, err)
		}
		if i == 0 {
			time.Sleep(15 * time.Second) // let it settle before measuring
			if rss, err := drivertest.RSSKiB(d.PID(m)); err == nil {
				t.Logf("%s: QEMU RSS, idle node from the template (%d MiB guest): %d MiB", host, m.MemoryMiB, rss>>10)
			}
		}
		if _, err := os.Stat(filepath.Join(m.Dir, TemplatePendingFile)); !os.IsNotExist(err) {
			t.Errorf("%s: %s still there after the start: %v", host, TemplatePendingFile, err)
		}

		if i == 1 {
			// A node made from the template is a normal node from now on:
			// it stops and boots from its own disk.
			if err := d.Stop(ctx, m); err != nil {
				t.Fatal(err)
			}
			from := driver.ConsoleSize(d.ConsolePath(m))
			t0 = time.Now()
			if err := d.Start(ctx, m); err != nil {
				t.Fatal(err)
			}
			if err := driver.WaitConsole(ctx, d.ConsolePath(m), from, marker, func() bool { return d.PID(m) != 0 }); err != nil {
				data, _ := os.ReadFile(d.ConsolePath(m))
				t.Fatalf("%s: boot after stop: %v\n%s", host, err, tailLines(string(data), 60))
			}
			t.Logf("%s: boot from its own disk after a stop: %.1fs", host, time.Since(t0).Seconds())
			if banner, err := tn.Banner(tn.GuestAddr + ":22"); err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
				t.Errorf("%s after reboot: ssh banner of %s: %q, %v", host, tn.GuestAddr, banner, err)
			}
		}
		if err := d.Delete(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if after, err := os.Stat(filepath.Join(tm.Dir, DiskFile)); err != nil || !after.ModTime().Equal(templateDisk.ModTime()) || after.Size() != templateDisk.Size() {
		t.Errorf("the template's disk changed while nodes ran from it: %v", err)
	}
}

// mergeOverlay adds files to an overlay tar written by drivertest.WriteOverlay and
// adds units to its overlay.json's enable list.
func mergeOverlay(path string, extra []drivertest.TarFile, enable ...string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var files []drivertest.TarFile
	tr := tar.NewReader(f)
	replaced := map[string]bool{}
	for _, e := range extra {
		replaced[e.Name] = true
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		if replaced[hdr.Name] {
			continue
		}
		s := string(body)
		if hdr.Name == "etc/kubelab/overlay.json" {
			for _, u := range enable {
				s = strings.Replace(s, `"enable":[`, `"enable":["`+u+`",`, 1)
			}
		}
		files = append(files, drivertest.TarFile{Name: hdr.Name, Mode: hdr.Mode, Body: s})
	}
	return drivertest.WriteOverlay(path, append(files, extra...))
}
