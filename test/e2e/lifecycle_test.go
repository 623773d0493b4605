package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/test/testenv"
)

// Generous bounds for software emulation; a run that needs them is slow,
// not broken, and the phase timings say where the time went.
const (
	upTimeout    = 45 * time.Minute
	checkTimeout = 25 * time.Minute
	shortTimeout = 5 * time.Minute
)

// TestLifecycleOverlay is the main flow with kubelab's own image and
// overlay provisioning: a killed up converges, check passes (NodePort from a
// LAN namespace through the host's forward), data survives stop/start, a
// refreshed worker rejoins, destroy leaves nothing behind.
func TestLifecycleOverlay(t *testing.T) {
	h := newHarness(t, "overlay", "qemu", smallNodes)
	before := h.residue()

	// up, killed while the VMs boot.
	h.killedUp()
	// A new up converges: no duplicate VMs, no leaked taps.
	h.kubelab(upTimeout, "up")
	if pids := qemuPIDs(h.lab); len(pids) != 2 {
		t.Fatalf("after a killed up and a new one there are %d QEMU processes of the lab, want 2: %v", len(pids), pids)
	}
	if taps := h.labTaps(); len(taps) != 2 {
		t.Fatalf("taps after converging: %v, want 2", taps)
	}
	h.requireTimings("up")
	h.requireReady()
	h.fromTemplate()

	out := h.kubelab(shortTimeout, "ssh", "cp1", "systemctl", "is-active", "etcd", "kube-apiserver")
	if strings.Count(out, "active") != 2 {
		t.Fatalf("ssh cp1: etcd and kube-apiserver not both active:\n%s", out)
	}

	h.kubelab(checkTimeout, "check", "--keep")
	h.nodePortFromLAN()
	h.kubectl("delete", "namespace", "kubelab-check", "--wait=false")
	h.securityProbes()
	h.renewAndRotate()
	if extraScenarios() {
		h.rotateEtcdCA()
	}

	if out, err := h.kubectl("create", "configmap", "e2e-survives", "--from-literal=answer=42"); err != nil {
		t.Fatalf("create configmap: %v\n%s", err, out)
	}
	h.snapshots()
	h.suspendResume()

	h.kubelab(shortTimeout, "stop")
	if pids := qemuPIDs(h.lab); len(pids) != 0 {
		t.Fatalf("QEMU still running after stop: %v", pids)
	}
	// Renewing on stopped nodes is refused before anything changes.
	pkiBefore := readFile(t, h.pki("apiserver.crt"))
	if out, err := h.kubelabErr(shortTimeout, "certs", "renew", "--all"); err == nil || !strings.Contains(out, "nothing was changed: cp1 is stopped") {
		t.Errorf("certs renew on stopped nodes: %v\n%s", err, out)
	}
	if readFile(t, h.pki("apiserver.crt")) != pkiBefore {
		t.Error("a refused renewal changed apiserver.crt")
	}
	h.kubelab(upTimeout, "start")
	h.requireReady()
	if out, err := h.kubectl("get", "configmap", "e2e-survives", "-o", "jsonpath={.data.answer}"); err != nil || out != "42" {
		t.Fatalf("configmap after stop/start: %q %v", out, err)
	}

	h.kubelab(upTimeout, "refresh", "w1")
	h.requireReady()

	h.kubelab(shortTimeout, "destroy")
	if _, err := os.Stat(filepath.Join(h.dir, "clusters", "k1", "pki", "ca.key")); err != nil {
		t.Errorf("destroy without --purge removed the PKI: %v", err)
	}
	// destroy took the snapshots with it: nothing to restore.
	if out, err := h.kubelabErr(shortTimeout, "snapshot", "restore", "s1"); err == nil || !strings.Contains(out, `no snapshot "s1"`) {
		t.Fatalf("snapshot restore after destroy: %v\n%s", err, out)
	}
	if d := before.diff(h.residue()); len(d) > 0 {
		t.Fatalf("destroy left residue:\n%s", strings.Join(d, "\n"))
	}
}

// TestLifecycleCloudInit is the smallest libvirt cluster: one control plane
// with stacked etcd and one worker, provisioned by cloud-init (a NoCloud
// cidata ISO), each a libvirt domain of a real libvirtd in the host
// namespace. up to Ready with both domains running, check, then the shared
// end: ACPI stop, start, a worker added later (routes and hosts on the
// running nodes), destroy with zero residue. This is the libvirt scenario
// CI runs; with hack/test.sh --e2e all the Kubernetes CA is also rotated
// before check (check then proves pods, services and DNS under the new CA).
func TestLifecycleCloudInit(t *testing.T) {
	h, before, step := upOnLibvirt(t, smallNodes)
	if extraScenarios() {
		h.rotateKubernetesCA()
		h.requireReadyWithin(2 * time.Minute) // past a kubelet-restart blip (see watchReady)
		step("Kubernetes CA rotated")
	}
	h.kubelab(checkTimeout, "check")
	step("check")
	h.stopStartDestroy(before, step)
}

// libvirtDomains lists the lab's libvirt domains as "state name" lines,
// as libvirtd (in the host namespace) reports them.
func (h *harness) libvirtDomains() string {
	h.t.Helper()
	out, err := exec.Command("virsh", "-c", "qemu:///system", "list", "--all", "--name").CombinedOutput()
	if err != nil {
		h.t.Fatalf("virsh list: %v\n%s", err, out)
	}
	var lines []string
	for _, name := range strings.Fields(string(out)) {
		if !strings.HasPrefix(name, h.lab+"-") {
			continue
		}
		st, err := exec.Command("virsh", "-c", "qemu:///system", "domstate", name).CombinedOutput()
		if err != nil {
			h.t.Fatalf("virsh domstate %s: %v\n%s", name, err, st)
		}
		lines = append(lines, strings.TrimSpace(string(st))+" "+name)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// killedUp starts `kubelab up` and SIGKILLs it once a VM is booting.
func (h *harness) killedUp() {
	h.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", h.hostNS, h.bin, "--dir", h.dir, "up")
	cmd.Env = h.env
	cmd.Stdout, cmd.Stderr = h.log, h.log
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	console := filepath.Join(h.dir, "clusters", "k1", "nodes", "w1", "console.log")
	deadline := time.Now().Add(20 * time.Minute) // the image may be built first
	for time.Now().Before(deadline) {
		if st, err := os.Stat(console); err == nil && st.Size() > 0 {
			break
		}
		select {
		case err := <-exited:
			h.t.Fatalf("kubelab up ended (%v) before any VM booted; see %s", err, h.log.Name())
		case <-time.After(time.Second):
		}
	}
	time.Sleep(5 * time.Second)
	cmd.Process.Kill()
	<-exited
	h.t.Logf("killed the first up while booting; QEMU processes now: %v", qemuPIDs(h.lab))
}

func (h *harness) labTaps() []string {
	out, _ := exec.Command("ip", "-n", h.hostNS, "-o", "link", "show", "type", "tun").CombinedOutput()
	var taps []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			taps = append(taps, strings.TrimSuffix(strings.Split(f[1], "@")[0], ":"))
		}
	}
	return taps
}

func (h *harness) requireReady() {
	h.t.Helper()
	out := h.kubelab(shortTimeout, "status", "-o", "json")
	var rows []struct {
		Node, State, Ready string
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		h.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	for _, r := range rows {
		if r.State != "running" {
			h.t.Fatalf("node %s is %s, want running", r.Node, r.State)
		}
		if r.Node == "w1" && r.Ready != "True" {
			h.t.Fatalf("worker w1 Ready=%s, want True", r.Ready)
		}
	}
}

// requireReadyWithin is requireReady, allowing w1 a kubelet-restart blip:
// it must answer Ready within d.
func (h *harness) requireReadyWithin(d time.Duration) {
	h.t.Helper()
	var last string
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Second) {
		out, err := h.kubectl("get", "node", "w1", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if last = strings.TrimSpace(out); err == nil && last == "True" {
			h.requireReady()
			return
		}
	}
	h.t.Fatalf("worker w1 not Ready within %s (last answer %q)", d, last)
}

func (h *harness) requireTimings(cmd string) {
	h.t.Helper()
	data, err := os.ReadFile(filepath.Join(h.dir, "timings-"+cmd+".json"))
	if err != nil {
		h.t.Fatalf("no phase timings for %s: %v", cmd, err)
	}
	var doc struct {
		Phases []struct {
			Phase   string
			Seconds float64
		}
	}
	if err := json.Unmarshal(data, &doc); err != nil || len(doc.Phases) < 5 {
		h.t.Fatalf("phase timings unreadable or short: %v\n%s", err, data)
	}
	os.WriteFile(filepath.Join(testenv.ArtifactsDir(h.t), "timings-"+cmd+".json"), data, 0o644)
}

// nodePortFromLAN fetches the check's NodePort service from the LAN
// namespace through the host's port forward (the host's LAN address, the
// cluster's NodePort range forwarded to the lab).
func (h *harness) nodePortFromLAN() {
	h.t.Helper()
	url := fmt.Sprintf("http://%s:%d/", hostLANAddr, 31000+80)
	var last string
	for i := 0; i < 30; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		// No wget -T: it crashes Debian's static busybox 1.35; the context bounds it.
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", h.lanNS, "busybox", "wget", "-q", "-O-", url).CombinedOutput()
		cancel()
		if err == nil && len(strings.TrimSpace(string(out))) > 0 {
			h.t.Logf("NodePort from the LAN namespace through the host forward: %s", strings.TrimSpace(string(out)))
			return
		}
		last = fmt.Sprintf("%v: %s", err, out)
		time.Sleep(5 * time.Second)
	}
	h.t.Fatalf("NodePort %s not reachable from the LAN namespace: %s", url, last)
}

// snapshots saves the cluster, changes it, restores it: what was written
// before the save is there, what was written after is gone, every node is
// Ready and its clock is the host's again.
func (h *harness) snapshots() {
	h.t.Helper()
	h.kubelab(shortTimeout, "snapshot", "save", "s1")
	if out, err := h.kubelabErr(shortTimeout, "snapshot", "save", "s1"); err == nil || !strings.Contains(out, "exists already") {
		h.t.Fatalf("saving over an existing snapshot: %v\n%s", err, out)
	}
	if out := h.kubelab(shortTimeout, "snapshot", "list"); !strings.Contains(out, "s1") || !strings.Contains(out, "iB") {
		h.t.Fatalf("snapshot list does not show s1 with its size:\n%s", out)
	}
	if out, err := h.kubectl("create", "configmap", "e2e-after-save", "--from-literal=answer=43"); err != nil {
		h.t.Fatalf("create configmap: %v\n%s", err, out)
	}
	h.kubelab(upTimeout, "snapshot", "restore", "s1")
	h.requireReady()
	if out, err := h.kubectl("get", "configmap", "e2e-survives", "-o", "jsonpath={.data.answer}"); err != nil || out != "42" {
		h.t.Fatalf("configmap written before the save, after restore: %q %v", out, err)
	}
	if out, err := h.kubectl("get", "configmap", "e2e-after-save"); err == nil || !strings.Contains(out, "NotFound") {
		h.t.Fatalf("configmap written after the save is still there after restore: %v\n%s", err, out)
	}
	h.requireClocks()
	h.requireTimings("snapshot-restore")
}

// suspendResume suspends every node and starts them again from memory.
func (h *harness) suspendResume() {
	h.t.Helper()
	boots := map[string]int{"cp1": h.boots("cp1"), "w1": h.boots("w1")}
	h.kubelab(shortTimeout, "stop", "--suspend")
	if pids := qemuPIDs(h.lab); len(pids) != 0 {
		h.t.Fatalf("QEMU still running after stop --suspend: %v", pids)
	}
	if out := h.kubelab(shortTimeout, "status"); strings.Count(out, "suspended") != 2 {
		h.t.Fatalf("status after stop --suspend does not show both nodes suspended:\n%s", out)
	}
	h.kubelab(upTimeout, "start")
	h.requireReady()
	if out, err := h.kubectl("get", "configmap", "e2e-survives", "-o", "jsonpath={.data.answer}"); err != nil || out != "42" {
		h.t.Fatalf("configmap after suspend/start: %q %v", out, err)
	}
	h.requireClocks()
	for n, c := range boots {
		if now := h.boots(n); now != c {
			h.t.Fatalf("%s booted again on start after suspend (%d boots in its console, %d before)", n, now, c)
		}
	}
}

// fromTemplate checks that every node resumed the image's node template
// instead of booting: no kernel booted in its console, the template's
// waiting guest applied its configuration after reseeding its random
// number generator from the host's. The template itself
// is in the lab beside the image, complete.
func (h *harness) fromTemplate() {
	h.t.Helper()
	for _, n := range []string{"cp1", "w1"} {
		console, _ := os.ReadFile(filepath.Join(h.dir, "clusters", "k1", "nodes", n, "console.log"))
		if b := h.boots(n); b != 0 {
			h.t.Fatalf("%s booted a kernel (%d times) instead of resuming the node template", n, b)
		}
		for _, want := range []string{"kubelab-template: configuration found, random number generator reseeded from the host"} {
			if !strings.Contains(string(console), want) {
				h.t.Fatalf("%s's console lacks %q: not made from the node template", n, want)
			}
		}
	}
	infos, _ := filepath.Glob(filepath.Join(h.dir, "images", "*", "templates", "*", "template.json"))
	if len(infos) != 2 {
		h.t.Fatalf("node templates in the lab: %v, want two (cp1 has one vCPU, w1 two)", infos)
	}
}

// boots counts the kernel boots in a node's console log.
func (h *harness) boots(node string) int {
	console, _ := os.ReadFile(filepath.Join(h.dir, "clusters", "k1", "nodes", node, "console.log"))
	return strings.Count(string(console), "Linux version")
}

// requireClocks checks every node's clock is within 15 s of the host's.
func (h *harness) requireClocks() {
	h.t.Helper()
	for _, n := range []string{"cp1", "w1"} {
		out := h.kubelab(shortTimeout, "ssh", n, "date", "+%s")
		var guest int64
		if _, err := fmt.Sscan(strings.TrimSpace(out), &guest); err != nil {
			h.t.Fatalf("date on %s: %q", n, out)
		}
		if d := time.Now().Unix() - guest; d > 15 || d < -15 {
			h.t.Fatalf("clock of %s is %d s off the host's", n, d)
		}
	}
}
