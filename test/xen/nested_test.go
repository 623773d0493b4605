// Package xen tests kubelab's Xen driver against a real Xen hypervisor:
// Debian's Xen 4.17 with a PV dom0, booted inside QEMU under software
// emulation (TCG emulates AMD SVM, which nested Xen needs; PV guests need
// no hardware virtualisation at all). kubelab runs in that dom0 and boots
// its node image as a PV guest. This is test code, not product.
package xen

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "embed"

	"github.com/kubelab/kubelab/internal/driver/drivertest"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/test/testenv"
)

var (
	//go:embed testdata/dom0-init
	dom0Init string
	//go:embed testdata/scenario.sh
	scenario string
	//go:embed testdata/newuser.sh
	newUserScenario string
)

// dom0Packages make the dom0: Xen and its toolstack, qdisk's QEMU for
// qcow2 disks, and what kubelab runs (qemu-img, ssh).
var dom0Packages = []string{
	"linux-image-amd64", "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "qemu-system-xen",
	"iproute2", "kmod", "procps", "udev", "e2fsprogs", "qemu-utils", "openssh-client", "ca-certificates",
}

var dom0Sources = []string{
	"deb http://deb.debian.org/debian bookworm main",
	"deb http://deb.debian.org/debian bookworm-updates main",
	"deb http://deb.debian.org/debian-security bookworm-security main",
}

const labYAML = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: %s
hypervisor: xen
xen:
  disk: %s
defaults:
  memory: 2GiB
clusters:
  - name: k1
    nodes:
      - name: cp1
        roles: [control-plane, etcd]
`

// The checks newuser.sh must report OK.
var newUserChecks = []string{
	"xl-info", "init", "set-xen", "plan", "up", "workers-ready", "status", "destroy", "destroy-no-domain",
}

// The checks scenario.sh must report OK, in its order.
var wantChecks = []string{
	"up", "marker", "xl-list", "domain-file", "etcd", "readyz", "status", "ssh", "logs", "console",
	"stop", "stop-no-domain", "status-stopped",
	"start", "readyz-after-start", "marker-twice",
	"destroy", "destroy-no-domain", "destroy-no-console-log", "destroy-no-disk", "destroy-no-bridge",
}

// TestKubelabOnNestedXen boots Xen and a dom0 in QEMU inside a network
// namespace the test makes (the VM has no NIC at all: the lab network
// lives inside dom0), and runs scenario.sh there: kubelab up of a one-node
// cluster (control plane and etcd) with hypervisor: xen, the readiness
// marker on the guest's Xen console, etcd healthy, the API server's
// /readyz, status, ssh, logs, console, stop (no domain left in xl list),
// start and destroy (no domain, console log, disk or bridge left).
func TestKubelabOnNestedXen(t *testing.T) {
	if testing.Short() {
		t.Skip("boots Xen under emulation; skipped with -short")
	}
	if os.Getenv("KUBELAB_E2E_EXTRA") != "1" {
		t.Skip("beyond CI's time budget (see the README); runs with hack/test.sh --e2e all")
	}
	if os.Geteuid() != 0 {
		drivertest.Missing(t, "needs root (mmdebstrap, a network namespace)")
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "ip", "zcat", "go"} {
		drivertest.RequireTool(t, tool)
	}
	start := time.Now()
	dom0 := ensureDom0(t)
	t.Logf("dom0 image: %s (%s)", dom0, time.Since(start).Round(time.Second))

	// KLTEST_XEN_TRIAL=newuser runs the README's steps as a new user
	// instead (by hand, once: the default topology of three nodes).
	trial := struct {
		script string
		checks []string
		memMiB int
		limit  time.Duration
	}{scenario, wantChecks, 3584, 60 * time.Minute}
	newUser := os.Getenv("KLTEST_XEN_TRIAL") == "newuser"
	if newUser {
		trial.script, trial.checks, trial.memMiB, trial.limit = newUserScenario, newUserChecks, 8192, 110*time.Minute
	}

	work := t.TempDir()
	lab := "xen" + drivertest.RandHex(2)
	payload := filepath.Join(work, "payload")
	labDir := filepath.Join(payload, "lab")
	if err := os.MkdirAll(labDir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(payload, "kubelab"), "./cmd/kubelab")
	build.Dir = testenv.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubelab: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", testenv.KubectlPath(t), filepath.Join(payload, "kubectl")).CombinedOutput(); err != nil {
		t.Fatalf("copy kubectl: %v\n%s", err, out)
	}
	// The node image goes in ready-made: dom0 has no component cache.
	if _, err := image.Install(drivertest.EnsureNodeImage(t), labDir, "kubelab"); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"scenario.sh": trial.script}
	if !newUser {
		if err := os.WriteFile(filepath.Join(labDir, "lab.yaml"), []byte(fmt.Sprintf(labYAML, lab, "qcow2")), 0o644); err != nil {
			t.Fatal(err)
		}
		addr := nodeAddress(t, filepath.Join(payload, "kubelab"), labDir, "cp1")
		files["scenario.env"] = fmt.Sprintf("LAB=%s\nNODE=cp1\nADDR=%s\n", lab, addr)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(payload, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	payloadImg := filepath.Join(work, "payload.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "payload", "-d", payload, payloadImg, "6G")
	rootDisk := filepath.Join(work, "dom0.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(dom0, "root.img"), "-F", "raw", rootDisk)

	ns := "kltest-xen-" + drivertest.RandHex(3)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	console := filepath.Join(testenv.ArtifactsDir(t), "xen-console.log")
	qemu := exec.Command("ip", "netns", "exec", ns, "qemu-system-x86_64",
		"-accel", "tcg,thread=multi", "-cpu", "qemu64,+svm,+npt", "-smp", "2", "-m", fmt.Sprint(trial.memMiB),
		"-display", "none", "-monitor", "none", "-serial", "file:"+console, "-no-reboot", "-nic", "none",
		"-drive", "file="+rootDisk+",if=virtio,format=qcow2",
		"-drive", "file="+payloadImg+",if=virtio,format=raw",
		"-kernel", filepath.Join(dom0, "xen.elf"),
		"-append", "console=com1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all noreboot",
		"-initrd", filepath.Join(dom0, "vmlinuz")+" root=/dev/vda rw console=hvc0 earlyprintk=xen init=/kltest-init,"+filepath.Join(dom0, "initrd.img"))
	qemuStart := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- qemu.Wait() }()
	t.Cleanup(func() {
		if qemu.ProcessState == nil {
			_ = qemu.Process.Kill()
			<-done
		}
	})

	// Follow the console: report dom0's boot and each step as they come.
	var dom0Up time.Duration
	seen := map[string]bool{}
	timeout := time.After(trial.limit)
	var log string
	for finished := false; !finished; {
		select {
		case err := <-done:
			finished = true
			if err != nil {
				t.Errorf("QEMU: %v", err)
			}
		case <-timeout:
			t.Errorf("the nested run did not finish in %s", trial.limit)
			finished = true
		case <-time.After(5 * time.Second):
		}
		data, _ := os.ReadFile(console)
		log = string(data)
		for _, line := range strings.Split(log, "\n") {
			line = strings.TrimSpace(line)
			if i := strings.Index(line, "XENTEST-"); i >= 0 && !seen[line[i:]] {
				seen[line[i:]] = true
				t.Logf("%s  (%s)", line[i:], time.Since(qemuStart).Round(time.Second))
			}
			if strings.Contains(line, "KLTEST-DOM0-UP") && dom0Up == 0 {
				dom0Up = time.Since(qemuStart)
				t.Logf("Xen and dom0 booted to the scenario in %s", dom0Up.Round(time.Second))
			}
		}
	}
	qemu.Process.Kill()

	failed := false
	for _, c := range trial.checks {
		// The nested serial console ends a line with one or two CRs.
		if !regexp.MustCompile(`XENTEST-OK ` + regexp.QuoteMeta(c) + `\r*\n`).MatchString(log) {
			t.Errorf("check %s did not pass", c)
			failed = true
		}
	}
	if strings.Contains(log, "XENTEST-FAIL") || !strings.Contains(log, "XENTEST-DONE") {
		failed = true
		t.Error("the scenario failed or did not finish")
	}
	if failed {
		t.Logf("the nested console (also in %s):\n%s", console, drivertest.Tail(log, 150))
	}
	t.Logf("whole nested run: %s", time.Since(qemuStart).Round(time.Second))
}

// ensureDom0 returns a directory with the dom0's root file system image
// (root.img, raw ext4), the uncompressed Xen binary QEMU's multiboot
// loader takes (xen.elf), and dom0's kernel and initrd, built with
// mmdebstrap once per set of inputs and cached beside the node images.
func ensureDom0(t *testing.T) string {
	t.Helper()
	key := sha256.New()
	json.NewEncoder(key).Encode([]any{"dom0-v1", dom0Packages, dom0Sources, dom0Init})
	cache := filepath.Join(testenv.CacheDir(), "xen-dom0", hex.EncodeToString(key.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(cache, "root.img")); err == nil {
		return cache
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o755); err != nil {
		t.Fatal(err)
	}
	// Built beside the cache entry and renamed into place when whole.
	work, err := os.MkdirTemp(filepath.Dir(cache), ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	t.Logf("building the Xen dom0 with mmdebstrap (3m43s measured on 2026-12-03)")
	args := []string{"--mode=root", "--variant=minbase", `--aptopt=APT::Install-Recommends "false"`,
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--include=" + strings.Join(dom0Packages, ","), "bookworm", root}
	args = append(args, dom0Sources...)
	if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap of the dom0: %v\n%s", err, drivertest.Tail(string(out), 40))
	}
	if err := os.WriteFile(filepath.Join(root, "kltest-init"), []byte(dom0Init), 0o755); err != nil {
		t.Fatal(err)
	}
	one := func(pattern string) string {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		if len(m) != 1 {
			t.Fatalf("dom0: want one %s, found %v", pattern, m)
		}
		return m[0]
	}
	xen, err := exec.Command("zcat", one("boot/xen-4.17*-amd64.gz")).Output()
	if err != nil {
		t.Fatalf("zcat xen: %v", err)
	}
	if err := os.WriteFile(filepath.Join(work, "xen.elf"), xen, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", one("boot/vmlinuz-*"), filepath.Join(work, "vmlinuz"))
	run(t, "cp", one("boot/initrd.img-*"), filepath.Join(work, "initrd.img"))
	run(t, "mkfs.ext4", "-q", "-F", "-L", "dom0root", "-d", root, filepath.Join(work, "root.img"), "3G")
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(work, cache); err != nil {
		t.Fatal(err)
	}
	return cache
}

// nodeAddress reads a node's address from kubelab plan.
func nodeAddress(t *testing.T, bin, labDir, node string) string {
	t.Helper()
	out, err := exec.Command(bin, "--dir", labDir, "plan", "-o", "json").Output()
	if err != nil {
		t.Fatalf("kubelab plan: %v", err)
	}
	var p struct {
		Clusters []struct {
			Nodes []struct{ Name, Address string }
		}
	}
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("kubelab plan -o json: %v", err)
	}
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			if n.Name == node {
				return n.Address
			}
		}
	}
	t.Fatalf("kubelab plan has no node %s:\n%s", node, out)
	return ""
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
