// Package e2e boots real clusters with the kubelab binary: QEMU VMs (KVM
// where it works, TCG otherwise), real etcd, API server, kubelets and
// CoreDNS. Everything runs inside network namespaces the test creates: one
// standing for the host (the lab's bridge, taps, VMs and rules live there)
// and one standing for a LAN client outside the lab. No traffic leaves them.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver/drivertest"
	"github.com/kubelab/kubelab/test/testenv"
)

// labYAML is a test lab: name, hypervisor, provisioning, then its nodes.
const labYAML = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: %s
hypervisor: %s
defaults:
  memory: 2GiB
  provisioning: %s
clusters:
  - name: k1
    nodes:
%s`

// smallNodes are one control plane with stacked etcd and one worker: the
// smallest cluster with a real kubelet.
var smallNodes = []string{"cp1", "w1"}

// haNodes are the HA topology at its smallest: three control planes with
// stacked etcd (one can be lost) and one worker.
var haNodes = []string{"cp1", "cp2", "cp3", "w1"}

// nodesYAML writes the nodes of a test lab: cpN are control planes with
// stacked etcd, wN workers.
func nodesYAML(names []string) string {
	var b strings.Builder
	for _, n := range names {
		if strings.HasPrefix(n, "cp") {
			fmt.Fprintf(&b, "      - name: %s\n        roles: [control-plane, etcd]\n", n)
			continue
		}
		// Pod sandboxes start in parallel; measured faster than one vCPU under TCG.
		fmt.Fprintf(&b, "      - name: %s\n        roles: [worker]\n        cpus: 2\n", n)
	}
	return b.String()
}

// Addresses of the LAN link between the host namespace and the LAN client.
const (
	hostLANAddr = "10.251.0.1"
	lanAddr     = "10.251.0.2"
)

type harness struct {
	t      *testing.T
	bin    string // kubelab binary
	dir    string // lab directory
	hostNS string // namespace standing for the host
	lanNS  string // namespace standing for a LAN client
	lab    string
	// hypervisor is lab.yaml's: qemu or libvirt.
	hypervisor string
	nodes      []string // the lab's node names
	env        []string
	log        *os.File
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed: run hack/install-deps.sh", tool)
			}
			t.Skipf("%s not installed (run hack/install-deps.sh)", tool)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the end-to-end test needs root (network namespaces, taps, nftables)")
		}
		t.Skip("needs root")
	}
}

// newHarness makes the namespaces and the lab.yaml of a test lab of nodes
// (see nodesYAML) run by hypervisor (qemu, or libvirt: then a libvirtd runs
// in the host namespace for the test's duration, as it would on a host).
func newHarness(t *testing.T, provisioning, hypervisor string, nodes []string) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	requireTools(t, "ip", "qemu-system-x86_64", "qemu-img", "ssh", "busybox", "nft")
	if hypervisor == "libvirt" {
		requireTools(t, "libvirtd", "virtlogd", "virsh")
	}
	suffix := randomSuffix()
	h := &harness{t: t, dir: t.TempDir(), lab: "e2e" + suffix[:4], hypervisor: hypervisor, nodes: nodes,
		hostNS: "kle2e-host-" + suffix, lanNS: "kle2e-lan-" + suffix}
	h.bin = testenv.BuildKubelab(t)
	var err error
	if h.log, err = os.Create(filepath.Join(testenv.ArtifactsDir(t), "kubelab-"+provisioning+".log")); err != nil {
		t.Fatal(err)
	}
	// The user's kubeconfig lives inside the test's own directory, so the
	// context merge and its removal are observable and touch nothing else.
	h.env = append(os.Environ(), "KUBECONFIG="+filepath.Join(h.dir, "user-kube", "config"))
	if err := os.WriteFile(filepath.Join(h.dir, "lab.yaml"), []byte(fmt.Sprintf(labYAML, h.lab, hypervisor, provisioning, nodesYAML(nodes))), 0o644); err != nil {
		t.Fatal(err)
	}
	h.sh("ip", "netns", "add", h.hostNS)
	if hypervisor == "libvirt" {
		// Started before cleanup is registered, so it stops after the
		// cleanup's destroy has used it.
		t.Cleanup(func() { exec.Command("ip", "netns", "del", h.hostNS).Run() })
		drivertest.StartLibvirtd(t, h.hostNS)
	}
	t.Cleanup(func() { h.cleanup() })
	h.sh("ip", "netns", "add", h.lanNS)
	h.sh("ip", "-n", h.hostNS, "link", "set", "lo", "up")
	h.sh("ip", "-n", h.lanNS, "link", "set", "lo", "up")
	h.sh("ip", "link", "add", "kle2e-h"+suffix[:4], "netns", h.hostNS, "type", "veth", "peer", "kle2e-l"+suffix[:4], "netns", h.lanNS)
	h.sh("ip", "-n", h.hostNS, "addr", "add", hostLANAddr+"/30", "dev", "kle2e-h"+suffix[:4])
	h.sh("ip", "-n", h.lanNS, "addr", "add", lanAddr+"/30", "dev", "kle2e-l"+suffix[:4])
	h.sh("ip", "-n", h.hostNS, "link", "set", "kle2e-h"+suffix[:4], "up")
	h.sh("ip", "-n", h.lanNS, "link", "set", "kle2e-l"+suffix[:4], "up")
	return h
}

// journals logs the tail of the control-plane services' journals of every
// control plane that still answers ssh: what a failed wait for the API
// server or etcd needs to be understood from a CI log.
func (h *harness) journals() {
	for _, n := range h.nodes {
		if !strings.HasPrefix(n, "cp") {
			continue
		}
		// kubelabErr logs the output.
		if _, err := h.kubelabErr(shortTimeout, "ssh", n, "journalctl", "--no-pager", "-o", "short-monotonic",
			"-u", "etcd", "-u", "kube-apiserver", "-u", "keepalived", "-n", "60"); err != nil {
			h.t.Logf("--- journal of %s: ssh failed: %v", n, err)
		}
	}
}

// cleanup kills whatever VMs are left (a failed test) and deletes both
// namespaces, so even a failure leaves nothing running.
func (h *harness) cleanup() {
	if h.t.Failed() {
		for _, n := range h.nodes {
			console := filepath.Join(h.dir, "clusters", "k1", "nodes", n, "console.log")
			h.t.Logf("--- console of %s (tail) ---\n%s", n, tail(console, 40))
		}
		h.journals()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	exec.CommandContext(ctx, "ip", "netns", "exec", h.hostNS, h.bin, "--dir", h.dir, "destroy", "--purge").Run()
	for _, pid := range qemuPIDs(h.lab) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	exec.Command("ip", "netns", "del", h.lanNS).Run()
	exec.Command("ip", "netns", "del", h.hostNS).Run()
	h.log.Close()
}

// kubelab runs the kubelab binary inside the host namespace and fails the
// test when it fails. Output goes to the test log and an artifact file.
func (h *harness) kubelab(timeout time.Duration, args ...string) string {
	h.t.Helper()
	out, err := h.kubelabErr(timeout, args...)
	if err != nil {
		h.t.Fatalf("kubelab %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (h *harness) kubelabErr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"netns", "exec", h.hostNS, h.bin, "--dir", h.dir}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = h.env
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	start := time.Now()
	err := cmd.Run()
	fmt.Fprintf(h.log, "$ kubelab %s   (%s)\n%s\n", strings.Join(args, " "), time.Since(start).Round(time.Second), buf.String())
	h.t.Logf("kubelab %s (%s):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Second), buf.String())
	return buf.String(), err
}

func (h *harness) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"netns", "exec", h.hostNS, testenv.KubectlPath(h.t), "--kubeconfig",
		filepath.Join(h.dir, "clusters", "k1", "kubeconfig")}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	return string(out), err
}

func (h *harness) sh(args ...string) string {
	h.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// residue is everything outside the lab directory that kubelab could leave
// behind, as seen from the host namespace.
type residue map[string]string

func (h *harness) residue() residue {
	r := residue{}
	run := func(key string, args ...string) {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		r[key] = normalize(string(out))
	}
	run("links", "ip", "-n", h.hostNS, "-o", "link", "show")
	run("addresses", "ip", "-n", h.hostNS, "-o", "addr", "show")
	run("routes", "ip", "-n", h.hostNS, "route", "show")
	run("nft", "ip", "netns", "exec", h.hostNS, "nft", "list", "ruleset")
	run("iptables", "ip", "netns", "exec", h.hostNS, "iptables-save")
	run("namespaces", "ip", "netns", "list")
	r["qemu"] = fmt.Sprint(qemuPIDs(h.lab))
	// Any process naming the lab directory: the config server, dnsmasq.
	procs, _ := exec.Command("pgrep", "-a", "-f", "--", h.dir).CombinedOutput()
	r["processes"] = string(procs)
	if h.hypervisor == "libvirt" {
		r["libvirt domains"] = h.libvirtDomains()
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	r["mounts"] = string(mounts)
	kc, err := os.ReadFile(filepath.Join(h.dir, "user-kube", "config"))
	if err != nil {
		r["kubeconfig"] = "absent"
	} else {
		r["kubeconfig"] = string(kc)
	}
	return r
}

// normalize drops counters and link indexes that change without kubelab.
func normalize(s string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, ": "); i > 0 && i < 6 {
			line = line[i+2:] // "12: name..." -> "name..."
		}
		// IPv6 duplicate address detection finishes on its own schedule:
		// a link-local address "tentative" before and settled after is
		// not something kubelab left behind.
		line = strings.ReplaceAll(line, " tentative", "")
		lines = append(lines, line)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (r residue) diff(after residue) []string {
	var out []string
	for k, v := range r {
		if after[k] != v {
			out = append(out, fmt.Sprintf("%s changed:\n--- before\n%s\n--- after\n%s", k, v, after[k]))
		}
	}
	sort.Strings(out)
	return out
}

// qemuPIDs finds QEMU processes of the lab by their -name <lab>-<node>.
func qemuPIDs(lab string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		for i, a := range args {
			// libvirt names its QEMU "guest=<domain>,debug-threads=on".
			if a == "-name" && i+1 < len(args) && strings.HasPrefix(strings.TrimPrefix(args[i+1], "guest="), lab+"-") {
				pids = append(pids, pid)
			}
		}
	}
	sort.Ints(pids)
	return pids
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.ReplaceAll(string(data), "\r", ""), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}
