package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHACloudInitLibvirt is The Hard Way on libvirt: the ha topology (three
// control planes with stacked etcd, one worker) provisioned by cloud-init
// (a NoCloud cidata ISO), the nodes libvirt domains of a real libvirtd in
// the host namespace. After check passes, the control plane holding the
// API's virtual address is powered off with virsh destroy: a write through
// the virtual address succeeds within 60 s, the worker stays Ready, kubectl
// through the host forward answers, status shows the node stopped, and
// start heals it (three healthy etcd members). Then the whole cluster stops
// through ACPI (every guest powers itself off) and starts again, and
// destroy undefines every domain. About 30 minutes: four emulated nodes on
// two cores. It runs with hack/test.sh --e2e all, not in CI: on two cores
// under TCG the three API servers' start is too close to starvation to gate
// a merge (one of three runs on 2026-12-03 had no API server ready after
// 20 minutes); CI runs the smaller libvirt cluster (TestLifecycleCloudInit).
func TestHACloudInitLibvirt(t *testing.T) {
	if !extraScenarios() {
		t.Skip("too close to starvation on two emulated cores to gate CI; runs with hack/test.sh --e2e all, see the README")
	}
	h, before, step := upOnLibvirt(t, haNodes)
	h.kubelab(checkTimeout, "check")
	step("check")
	h.etcdHealthy(3)

	vip := h.apiVIP()
	holder := h.vipHolder(vip)
	t.Logf("the API's virtual address %s is on %s; powering %s off with virsh destroy", vip, holder, holder)
	h.sh("virsh", "-c", "qemu:///system", "destroy", h.lab+"-"+holder)
	lost := time.Now()

	// A write through the cluster's API endpoint, the virtual address.
	var last, written string
	for n := 0; ; n++ {
		written = fmt.Sprintf("ha-write-%d", n)
		out, err := h.kubectl("--server", "https://"+vip+":6443", "--request-timeout=5s",
			"create", "configmap", written, "--from-literal=lost="+holder)
		if err == nil {
			t.Logf("first write through %s succeeded %s after %s was lost", vip, time.Since(lost).Round(time.Second), holder)
			break
		}
		last = strings.TrimSpace(out)
		if time.Since(lost) > 60*time.Second {
			t.Fatalf("no write through %s within 60 s of losing %s; last answer: %s", vip, holder, last)
		}
		time.Sleep(2 * time.Second)
	}
	step("write after losing a control plane")
	if now := h.vipHolder(vip); now == holder {
		t.Fatalf("the virtual address is still reported on %s", holder)
	} else {
		t.Logf("the virtual address moved to %s", now)
	}

	// The worker stays Ready past the node monitor's grace period (40 s):
	// its kubelet reaches the API through the virtual address. Every
	// answer, asked through the host forward, must say Ready.
	answers := 0
	for time.Since(lost) < 100*time.Second {
		out, err := h.kubectl("--request-timeout=10s", "get", "node", "w1", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			t.Fatalf("kubectl through the host forward, %s after losing %s: %v\n%s", time.Since(lost).Round(time.Second), holder, err, out)
		}
		if strings.TrimSpace(out) != "True" {
			t.Fatalf("w1 Ready=%q %s after losing %s", out, time.Since(lost).Round(time.Second), holder)
		}
		answers++
		time.Sleep(5 * time.Second)
	}
	if answers < 5 {
		t.Fatalf("only %d answers about w1 in 100 s", answers)
	}
	step("worker Ready for 100 s")

	// status shows the lost node stopped and the others running.
	for node, state := range h.nodeStates() {
		want := "running"
		if node == holder {
			want = "stopped"
		}
		if state != want {
			t.Fatalf("status: %s is %s, want %s", node, state, want)
		}
	}

	// start heals it: the domain boots, its etcd member rejoins.
	h.kubelab(upTimeout, "start")
	h.requireReady()
	h.requireDomains("running")
	h.etcdHealthy(3)
	step("start heals")
	if out, err := h.kubectl("get", "configmap", written, "-o", "jsonpath={.data.lost}"); err != nil || out != holder {
		t.Fatalf("the write made while %s was down, read after healing: %q %v", holder, out, err)
	}

	h.stopStartDestroy(before, step)
}

// upOnLibvirt starts a libvirt scenario: a cloud-init lab of the given
// nodes brought up to Ready with every domain running. It returns the
// harness, the host's state before, and the step timer.
func upOnLibvirt(t *testing.T, nodes []string) (*harness, residue, func(string)) {
	t.Helper()
	h := newHarness(t, "cloud-init", "libvirt", nodes)
	before := h.residue()
	step := h.stepTimer()
	h.kubelab(upTimeout, "up")
	h.requireReady()
	h.requireDomains("running")
	step("up")
	return h, before, step
}

// stopStartDestroy ends a libvirt scenario: a clean ACPI stop (every
// domain shut off, every guest powered itself down), a start of the same
// domains to Ready, a worker added to the running cluster, and destroy
// with zero residue.
func (h *harness) stopStartDestroy(before residue, step func(string)) {
	t := h.t
	t.Helper()
	// A clean ACPI shutdown through libvirt: each guest powers itself off.
	h.kubelab(shortTimeout, "stop")
	h.requireDomains("shut off")
	for _, n := range h.nodes {
		console := filepath.Join(h.dir, "clusters", "k1", "nodes", n, "console.log")
		if !strings.Contains(tail(console, 5), "reboot: Power down") {
			t.Errorf("%s did not power itself down (console tail):\n%s", n, tail(console, 5))
		}
	}
	step("stop")
	// Started again from their own disks: the same domains boot.
	h.kubelab(upTimeout, "start")
	h.requireReady()
	h.requireDomains("running")
	step("start")
	h.addWorkerLater()
	step("worker added")
	h.kubelab(shortTimeout, "destroy")
	if d := before.diff(h.residue()); len(d) > 0 {
		t.Fatalf("destroy left residue:\n%s", strings.Join(d, "\n"))
	}
	step("destroy")
}

// stepTimer logs how long each named step took since the previous one.
func (h *harness) stepTimer() func(string) {
	last := time.Now()
	return func(name string) {
		h.t.Logf("STEP %-40s %s", name, time.Since(last).Round(time.Second))
		last = time.Now()
	}
}

// requireDomains checks that every node of the lab is a libvirt domain in
// state.
func (h *harness) requireDomains(state string) {
	h.t.Helper()
	var want []string
	for _, n := range h.nodes {
		want = append(want, state+" "+h.lab+"-"+n)
	}
	if got := h.libvirtDomains(); got != strings.Join(want, "\n") {
		h.t.Fatalf("libvirt's domains of the lab:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// apiVIP is the cluster's API virtual address from kubelab's plan.
func (h *harness) apiVIP() string {
	h.t.Helper()
	out := h.kubelab(shortTimeout, "plan", "-o", "json")
	var p struct {
		Clusters []struct {
			APIVIP    string `json:"apiVIP"`
			APIServer string `json:"apiServer"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &p); err != nil || len(p.Clusters) != 1 {
		h.t.Fatalf("plan -o json: %v\n%s", err, out)
	}
	c := p.Clusters[0]
	if c.APIVIP == "" || c.APIServer != c.APIVIP+":6443" {
		h.t.Fatalf("plan: API endpoint %q, virtual address %q; want the endpoint on the virtual address", c.APIServer, c.APIVIP)
	}
	return c.APIVIP
}

// vipHolder names the one running control plane that has addr on eth0.
func (h *harness) vipHolder(addr string) string {
	h.t.Helper()
	var holders []string
	for node, state := range h.nodeStates() {
		if !strings.HasPrefix(node, "cp") || state != "running" {
			continue
		}
		out := h.kubelab(shortTimeout, "ssh", node, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
		if strings.Contains(out, " "+addr+"/") {
			holders = append(holders, node)
		}
	}
	if len(holders) != 1 {
		h.t.Fatalf("the virtual address %s is on %v; want exactly one control plane", addr, holders)
	}
	return holders[0]
}

// nodeStates maps node names to their state in kubelab status.
func (h *harness) nodeStates() map[string]string {
	h.t.Helper()
	out := h.kubelab(shortTimeout, "status", "-o", "json")
	var rows []struct{ Node, State string }
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		h.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, r := range rows {
		m[r.Node] = r.State
	}
	return m
}

// etcdHealthy asks etcd on a running control plane for the health of every
// member of the cluster and requires want healthy ones.
func (h *harness) etcdHealthy(want int) {
	h.t.Helper()
	addrs := h.nodeAddrs()
	var out string
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(5 * time.Second) {
		var err error
		out, err = h.kubelabErr(shortTimeout, "ssh", "cp2", "/usr/local/bin/etcdctl",
			"--endpoints=https://"+addrs["cp2"]+":2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
			"--cert=/etc/kubernetes/pki/etcd/apiserver-client.crt", "--key=/etc/kubernetes/pki/etcd/apiserver-client.key",
			"endpoint", "health", "--cluster", "-w", "json")
		var health []struct {
			Endpoint string `json:"endpoint"`
			Health   bool   `json:"health"`
		}
		if err == nil {
			if i := strings.Index(out, "["); i >= 0 && json.Unmarshal([]byte(out[i:strings.LastIndex(out, "]")+1]), &health) == nil {
				healthy := 0
				for _, m := range health {
					if m.Health {
						healthy++
					}
				}
				if healthy == want && len(health) == want {
					h.t.Logf("etcd: %d healthy members", healthy)
					return
				}
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("etcd does not report %d healthy members:\n%s", want, out)
		}
	}
}

// addWorkerLater adds w2 to lab.yaml of the running cluster and runs up:
// w2 boots and is Ready, and the nodes that were running learn of it
// without a restart (The Hard Way's static routes): w1 and a control
// plane route w2's pod CIDR via w2 and have it in /etc/hosts, and w2
// routes w1's.
func (h *harness) addWorkerLater() {
	h.t.Helper()
	spec := filepath.Join(h.dir, "lab.yaml")
	data := readFile(h.t, spec)
	if err := os.WriteFile(spec, []byte(data+nodesYAML([]string{"w2"})), 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.nodes = append(h.nodes, "w2")
	h.kubelab(upTimeout, "up")
	h.requireDomains("running")
	if out, err := h.kubectl("get", "node", "w2", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`); err != nil || out != "True" {
		h.t.Fatalf("w2 Ready=%q %v", out, err)
	}
	pods := h.podCIDRs()
	addrs := h.nodeAddrs()
	for _, c := range []struct{ on, to string }{{"w1", "w2"}, {"cp1", "w2"}, {"w2", "w1"}} {
		out := h.kubelab(shortTimeout, "ssh", c.on, "ip", "-4", "route", "show", pods[c.to])
		if !strings.Contains(out, "via "+addrs[c.to]) {
			h.t.Errorf("%s has no route to %s's pod CIDR %s via %s:\n%s", c.on, c.to, pods[c.to], addrs[c.to], out)
		}
		if hosts := h.kubelab(shortTimeout, "ssh", c.on, "cat", "/etc/hosts"); !strings.Contains(hosts, addrs[c.to]+"\t"+c.to) {
			h.t.Errorf("%s's /etc/hosts lacks %s:\n%s", c.on, c.to, hosts)
		}
	}
}

// podCIDRs maps workers to their pod CIDRs from kubelab's plan.
func (h *harness) podCIDRs() map[string]string {
	h.t.Helper()
	out := h.kubelab(shortTimeout, "plan", "-o", "json")
	var p struct {
		Clusters []struct {
			Nodes []struct {
				Name    string `json:"name"`
				PodCIDR string `json:"podCIDR"`
			} `json:"nodes"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &p); err != nil || len(p.Clusters) != 1 {
		h.t.Fatalf("plan -o json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, n := range p.Clusters[0].Nodes {
		if n.PodCIDR != "" {
			m[n.Name] = n.PodCIDR
		}
	}
	return m
}
