package xen

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func baseMachine() driver.Machine {
	return driver.Machine{
		Lab: "lab", Name: "node-1", Dir: "/var/lib/kubelab/lab/clusters/c1/nodes/node-1",
		CPUs: 2, MemoryMiB: 1536, DiskGiB: 20,
		BaseImage: "/var/lib/kubelab/lab/images/kubelab/disk.qcow2",
		Kernel:    "/var/lib/kubelab/lab/images/kubelab/vmlinuz",
		Initrd:    "/var/lib/kubelab/lab/images/kubelab/initrd.img",
		Cmdline:   "root=LABEL=kubelab-root rw console=ttyS0 net.ifnames=0",
		MAC:       "00:16:3e:4e:31:12", Tap: "kl-lab-12", Bridge: "kl-lab",
		Config: driver.Config{Kind: driver.ConfigOverlay, Path: "/var/lib/kubelab/lab/clusters/c1/nodes/node-1/overlay.tar"},
	}
}

var configCases = []struct {
	name   string
	format string
	edit   func(*driver.Machine)
}{
	{"overlay-qcow2", DiskQCOW2, func(*driver.Machine) {}},
	{"cloudinit-raw", DiskRaw, func(m *driver.Machine) {
		m.Config = driver.Config{Kind: driver.ConfigCloudInit, Path: m.Dir + "/cloud-init"}
	}},
	{"no-net-no-config-no-initrd", DiskQCOW2, func(m *driver.Machine) {
		m.MAC, m.Tap, m.Bridge, m.Initrd, m.Config = "", "", "", "", driver.Config{}
		m.CPUs = 0
	}},
}

func render(t *testing.T, format string, edit func(*driver.Machine)) (driver.Machine, DomainConfig, string) {
	t.Helper()
	m := baseMachine()
	edit(&m)
	c := New(Options{DiskFormat: format}).domainConfig(m)
	got, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	return m, c, got
}

// TestDomainFileGolden pins the xl domain files (refresh with -update).
func TestDomainFileGolden(t *testing.T) {
	for _, tc := range configCases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, got := render(t, tc.format, tc.edit)
			drivertest.Golden(t, filepath.Join("testdata", tc.name+".cfg"), got, *update)
		})
	}
}

var (
	xlparseOnce sync.Once
	xlparseBin  string
	xlparseErr  string
)

// xlParse parses a domain file with Xen's own parser (libxlutil, from
// Debian's libxen-dev) through testdata/xlparse.c, built once per run.
func xlParse(t *testing.T, cfg string) (map[string][]string, error) {
	t.Helper()
	xlparseOnce.Do(func() {
		if _, err := exec.LookPath("gcc"); err != nil {
			xlparseErr = "gcc is not installed (run hack/install-deps.sh)"
			return
		}
		if _, err := os.Stat("/usr/include/libxlutil.h"); err != nil {
			xlparseErr = "libxlutil.h is not installed: apt-get install libxen-dev (or run hack/install-deps.sh)"
			return
		}
		dir, err := os.MkdirTemp("", "kltest-xlparse-")
		if err != nil {
			xlparseErr = err.Error()
			return
		}
		bin := filepath.Join(dir, "xlparse")
		if out, err := exec.Command("gcc", "-Wall", "-Werror", "-o", bin, "testdata/xlparse.c", "-lxlutil", "-lxenlight").CombinedOutput(); err != nil {
			xlparseErr = "build testdata/xlparse.c: " + err.Error() + ": " + string(out)
			return
		}
		xlparseBin = bin
	})
	if xlparseBin == "" {
		drivertest.Missing(t, xlparseErr)
	}
	f := filepath.Join(t.TempDir(), "node.cfg")
	if err := os.WriteFile(f, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(xlparseBin, f).CombinedOutput()
	if err != nil {
		return nil, &parseError{string(out)}
	}
	vals := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		vals[k] = append(vals[k], v)
	}
	return vals, nil
}

type parseError struct{ out string }

func (e *parseError) Error() string { return "xl's parser refused the file: " + e.out }

func TestMain(m *testing.M) {
	if os.Getenv("KLTEST_FAKE_XENCONSOLED") == "1" {
		// Stands in for a running xenconsoled (lifecycle_test.go): only
		// its name and arguments matter.
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	code := m.Run()
	if xlparseBin != "" {
		os.RemoveAll(filepath.Dir(xlparseBin))
	}
	os.Exit(code)
}

// TestDomainFileParsedByXen reads every generated domain file with Xen's
// own parser and checks each value against the machine it came from.
func TestDomainFileParsedByXen(t *testing.T) {
	for _, tc := range configCases {
		t.Run(tc.name, func(t *testing.T) {
			m, c, cfg := render(t, tc.format, tc.edit)
			got, err := xlParse(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			cpus := "1"
			if m.CPUs > 0 {
				cpus = strconv.Itoa(m.CPUs)
			}
			want := map[string][]string{
				"name": {m.ID()}, "type": {"pv"}, "memory": {strconv.FormatUint(m.MemoryMiB, 10)}, "maxmem": {strconv.FormatUint(m.MemoryMiB, 10)},
				"vcpus": {cpus}, "kernel": {m.Kernel}, "extra": {XenCmdline(m.Cmdline, m.Config.Kind)},
				"on_poweroff": {"destroy"}, "on_reboot": {"restart"}, "on_crash": {"destroy"},
			}
			if m.Initrd != "" {
				want["ramdisk"] = []string{m.Initrd}
			}
			if m.MAC != "" {
				want["vif"] = []string{"mac=" + m.MAC + ",bridge=" + m.Bridge}
			}
			backend := "unknown" // xl picks blkback for raw files
			if tc.format == DiskQCOW2 {
				backend = "qdisk"
			}
			want["disk"] = []string{"vdev:xvda format:" + tc.format + " backend:" + backend + " rw:1 target:" + c.Disk}
			if c.ConfigFile != "" {
				want["disk"] = append(want["disk"], "vdev:xvdb format:raw backend:unknown rw:0 target:"+c.ConfigFile)
			}
			for k, w := range want {
				if strings.Join(got[k], "|") != strings.Join(w, "|") {
					t.Errorf("%s: xl reads %q, want %q", k, got[k], w)
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("xl reads %s=%q, which the test does not expect", k, got[k])
				}
			}
			if !strings.Contains(got["extra"][0], "console=hvc0") || strings.Contains(got["extra"][0], "ttyS0") {
				t.Errorf("the guest's console is not Xen's: %q", got["extra"][0])
			}
		})
	}
}

// TestMalformedValuesCannotBeGenerated tries to break out of the domain
// file's quoting, or to add a line or a disk option, through every value
// kubelab writes: each is refused. Values that are odd but safe (a space in
// a path) round-trip through Xen's parser unchanged.
func TestMalformedValuesCannotBeGenerated(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*driver.Machine)
		want string
	}{
		{"quote in kernel path", func(m *driver.Machine) { m.Kernel = `/k/vm"linuz` }, "kernel"},
		{"single quote in disk dir", func(m *driver.Machine) { m.Dir = "/var/lib/it's/node" }, "disk"},
		{"comma in disk dir", func(m *driver.Machine) { m.Dir = "/var/lib/a,backendtype=phy/node" }, "disk"},
		{"newline in initrd", func(m *driver.Machine) { m.Initrd = "/k/initrd\nbootloader = \"/bin/sh\"" }, "initrd"},
		{"backslash in config", func(m *driver.Machine) { m.Config.Path = `/k/o\.tar` }, "config medium"},
		{"quote in command line", func(m *driver.Machine) { m.Cmdline = `root=/dev/xvda" kernel="/evil` }, "kernel command line"},
		{"control character in command line", func(m *driver.Machine) { m.Cmdline = "root=/dev/xvda\x1b[2J" }, "kernel command line"},
		{"quote in bridge", func(m *driver.Machine) { m.Bridge = "br0',script=/evil" }, "bridge"},
		{"relative kernel", func(m *driver.Machine) { m.Kernel = "vmlinuz" }, "kernel"},
		{"no kernel", func(m *driver.Machine) { m.Kernel, m.Initrd, m.Cmdline = "", "", "" }, "has none"},
		{"bad MAC", func(m *driver.Machine) { m.MAC = "00:16:3e:zz:31:12" }, "MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMachine()
			tc.edit(&m)
			_, err := Render(New(Options{}).domainConfig(m))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Render: %v, want an error about %s", err, tc.want)
			}
		})
	}

	m := baseMachine()
	m.Dir = "/var/lib/kubelab/my lab/clusters/c1/nodes/node-1"
	c := New(Options{}).domainConfig(m)
	cfg, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := xlParse(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(got["disk"]) != 2 || !strings.HasSuffix(got["disk"][0], "target:"+c.Disk) {
		t.Errorf("a path with a space: xl reads disks %q, want target %s", got["disk"], c.Disk)
	}
}

func TestXenCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind driver.ConfigKind
		want string
	}{
		{"root=LABEL=r rw console=ttyS0 net.ifnames=0", driver.ConfigOverlay, "root=LABEL=r rw net.ifnames=0 console=hvc0 " + ConfigDiskArg},
		{"root=LABEL=r", driver.ConfigCloudInit, "root=LABEL=r console=hvc0"},
		{"console=tty0 console=ttyS0,115200", driver.ConfigNone, "console=hvc0"},
	} {
		if got := XenCmdline(tc.in, tc.kind); got != tc.want {
			t.Errorf("XenCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
