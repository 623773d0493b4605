package qemu

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
	"github.com/kubelab/kubelab/internal/render/cloudinit"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func baseMachine() driver.Machine {
	return driver.Machine{
		Lab: "lab", Name: "c1-worker-1", Dir: "/var/lib/kubelab/lab/clusters/c1/nodes/worker-1",
		CPUs: 2, MemoryMiB: 2048, DiskGiB: 20,
		BaseImage: "/var/lib/kubelab/lab/images/kubelab/disk.qcow2",
		Kernel:    "/var/lib/kubelab/lab/images/kubelab/vmlinuz",
		Initrd:    "/var/lib/kubelab/lab/images/kubelab/initrd.img",
		Cmdline:   "root=/dev/vda rw console=ttyS0",
		MAC:       "00:16:3e:4e:31:12", Tap: "kl-lab-12", Netns: "kubelab-lab",
	}
}

// TestArgsGolden pins the QEMU command line per accelerator and config kind
// (the generated qemu.sh). Refresh with -update.
func TestArgsGolden(t *testing.T) {
	cases := []struct {
		name  string
		accel string
		edit  func(*driver.Machine)
	}{
		{"overlay-tcg", AccelTCG, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/overlay.tar"}
		}},
		{"overlay-kvm", AccelKVM, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/overlay.tar"}
		}},
		{"cloudinit-dir", AccelTCG, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigCloudInit, Path: m.Dir + "/cloud-init"}
		}},
		{"ignition-diskboot", AccelTCG, func(m *driver.Machine) {
			m.Kernel, m.Initrd, m.Cmdline = "", "", ""
			m.Config = driver.Config{Kind: driver.ConfigIgnition, Path: m.Dir + "/ignition,v1.json"}
		}},
		{"no-net-no-config", AccelTCG, func(m *driver.Machine) {
			m.Tap, m.MAC, m.Netns = "", "", ""
		}},
		// A template: its NIC on a hub with no other port.
		{"template-boot", AccelTCG, func(m *driver.Machine) {
			m.Tap, m.Netns = "", ""
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/config.img"}
		}},
		// A node made from a template: the same devices, its tap, and its
		// overlay padded to the template's size in its own directory.
		{"from-template", AccelTCG, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/overlay.tar"}
			m.Template = "/var/lib/kubelab/lab/images/kubelab/templates/0123456789abcdef"
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := baseMachine()
			c.edit(&m)
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			d := New(Options{Accel: c.accel})
			got, err := d.Describe(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			drivertest.Golden(t, filepath.Join("testdata", c.name+".sh"), got, *update)
		})
	}
}

func TestArgsInvariants(t *testing.T) {
	m := baseMachine()
	m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: "/x/overlay.tar"}
	tcg := strings.Join(Args(m, AccelTCG), " ")
	for _, want := range []string{
		"-accel tcg,tb-size=256 -cpu max -smp 2", // lab.yaml cpus, honoured under TCG too
		"-name lab-c1-worker-1 ",
		"serial=kubelab-config",
		"ifname=kl-lab-12,script=no,downscript=no",
		"mac=00:16:3e:4e:31:12",
		"virtio-rng-pci",
		"append=on",
		"-daemonize",
	} {
		if !strings.Contains(tcg, want) {
			t.Errorf("TCG args lack %q:\n%s", want, tcg)
		}
	}
	if kvm := strings.Join(Args(m, AccelKVM), " "); !strings.Contains(kvm, "-accel kvm -cpu host -smp 2") {
		t.Errorf("KVM args: %s", kvm)
	}
	// The node disk must be the first virtio disk (the guest's /dev/vda).
	a := Args(m, AccelTCG)
	for _, s := range a {
		if strings.HasPrefix(s, "virtio-blk-pci") {
			if !strings.HasPrefix(s, "virtio-blk-pci,drive=disk0") {
				t.Errorf("first virtio-blk device is %q, want the node disk", s)
			}
			break
		}
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		edit func(*driver.Machine)
		want string // substring of the error; "" = valid
	}{
		{"ok", func(*driver.Machine) {}, ""},
		{"no name", func(m *driver.Machine) { m.Name = "" }, "name is empty"},
		{"bad name", func(m *driver.Machine) { m.Name = "a b" }, "may only use"},
		{"relative dir", func(m *driver.Machine) { m.Dir = "nodes/x" }, "absolute"},
		{"small memory", func(m *driver.Machine) { m.MemoryMiB = 16 }, "too small"},
		{"no base", func(m *driver.Machine) { m.BaseImage = "" }, "no base image"},
		{"initrd without kernel", func(m *driver.Machine) { m.Kernel = "" }, "without a kernel"},
		{"tap without mac", func(m *driver.Machine) { m.MAC = "" }, "without a MAC"},
		{"bad mac", func(m *driver.Machine) { m.MAC = "00:16:3e" }, "MAC"},
		{"config without path", func(m *driver.Machine) { m.Config = driver.Config{Kind: driver.ConfigIgnition} }, "without a path"},
		{"unknown config", func(m *driver.Machine) { m.Config = driver.Config{Kind: "floppy", Path: "/x"} }, "unknown config kind"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := baseMachine()
			c.edit(&m)
			err := m.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestSocketPathTooLong(t *testing.T) {
	m := baseMachine()
	m.Dir = "/" + strings.Repeat("d", 120)
	err := New(Options{Accel: AccelTCG}).Create(context.Background(), m)
	if err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("Create with a long dir: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                          "plain",
		"file=/a/b,c=d":                  "file=/a/b,c=d",
		"root=/dev/vda rw console=ttyS0": "'root=/dev/vda rw console=ttyS0'",
		"it's":                           `'it'\''s'`,
		"":                               "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestCreateConfigMedia uses the real qemu-img and genisoimage: the overlay
// disk on a base, the size check of the overlay tar, the cidata ISO built
// from a cloud-init directory and rebuilt when a source changes.
func TestCreateConfigMedia(t *testing.T) {
	drivertest.RequireTool(t, "qemu-img")
	drivertest.RequireTool(t, "genisoimage")
	work := t.TempDir()
	base := filepath.Join(work, "base.qcow2")
	if err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", base, "2G"); err != nil {
		t.Fatal(err)
	}
	ci := filepath.Join(work, "cloud-init")
	if err := os.MkdirAll(ci, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{cloudinit.UserData, cloudinit.MetaData, cloudinit.NetworkConfig} {
		if err := os.WriteFile(filepath.Join(ci, f), []byte("#cloud-config\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := New(Options{Accel: AccelTCG})
	ctx := context.Background()
	m := driver.Machine{Lab: "t", Name: "n1", Dir: filepath.Join(work, "n1"), MemoryMiB: 512, DiskGiB: 1,
		BaseImage: base, Config: driver.Config{Kind: driver.ConfigCloudInit, Path: ci}}
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	// DiskGiB below the base's size keeps the base's size.
	if size, err := d.media().VirtualSize(ctx, filepath.Join(m.Dir, DiskFile)); err != nil || size != 2<<30 {
		t.Errorf("overlay size %d (%v), want the base's 2 GiB", size, err)
	}
	if st, err := os.Stat(filepath.Join(m.Dir, DiskFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("disk: %v %v", st, err)
	}
	iso := filepath.Join(m.Dir, CIDataFile)
	data, err := os.ReadFile(iso)
	if err != nil {
		t.Fatal(err)
	}
	// ISO 9660 primary volume descriptor at 32 KiB: volume id at offset 40.
	if len(data) < 0x8000+72 || !strings.HasPrefix(string(data[0x8000+40:0x8000+72]), "cidata") {
		t.Fatal("cidata.iso has no volume id cidata")
	}
	first, _ := os.Stat(iso)
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(iso); !again.ModTime().Equal(first.ModTime()) {
		t.Error("ISO rebuilt although nothing changed")
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(filepath.Join(ci, cloudinit.UserData), later, later); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(iso); again.ModTime().Equal(first.ModTime()) {
		t.Error("ISO not rebuilt after user-data changed")
	}

	// An overlay tar that is not a multiple of 512 bytes is refused.
	bad := filepath.Join(work, "bad.tar")
	if err := os.WriteFile(bad, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	m2 := m
	m2.Name, m2.Dir, m2.Config = "n2", filepath.Join(work, "n2"), driver.Config{Kind: driver.ConfigOverlay, Path: bad}
	if err := d.Create(ctx, m2); err == nil || !strings.Contains(err.Error(), "multiple of 512") {
		t.Errorf("Create with a short overlay: %v", err)
	}
	// Start refuses a machine that was never created.
	m3 := m
	m3.Name, m3.Dir = "n3", filepath.Join(work, "n3")
	if err := d.Start(ctx, m3); err == nil || !strings.Contains(err.Error(), "not created") {
		t.Errorf("Start of an absent machine: %v", err)
	}
	if err := d.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		t.Errorf("Delete left %s", m.Dir)
	}
	if _, err := os.Stat(ci); err != nil {
		t.Errorf("Delete removed the cloud-init sources: %v", err)
	}
}

func runCmd(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
