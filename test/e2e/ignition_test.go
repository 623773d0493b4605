package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

// ignitionLab is the "Kubernetes and Xen" guide's provisioning on kubelab's
// own image: dnsmasq hands each node its planned address by MAC, and each
// node's initramfs runs the real Ignition, which fetches the node's config
// from the lab's config server by the URL on its kernel command line.
const ignitionLab = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: %s
hypervisor: qemu
network:
  dhcp: true
  configServer: true
defaults:
  memory: 2GiB
  provisioning: ignition
clusters:
  - name: k1
    butane: %s
    nodes:
%s`

// refreshSnippet is the change refresh applies, as the guide's ntp change
// is: a Butane snippet the node gets only by running Ignition again.
const refreshSnippet = `variant: fcos
version: 1.5.0
storage:
  files:
    - path: /etc/kubelab-refreshed
      mode: 0644
      contents:
        inline: applied by a refresh
`

// TestIgnitionConfigServer: one control plane (stacked etcd) and one
// worker, both provisioned by Ignition over HTTP with addresses by DHCP.
// up to Ready; each node fetched its own config once from its own address
// and took its lease for its MAC; Ignition ran in the initramfs and
// removed the first-boot flag. Then the guide's refresh of w1 with a
// changed config: its disk kept, a new machine id, the config fetched and
// applied again, Ready again. destroy stops the config server and dnsmasq
// and leaves nothing.
func TestIgnitionConfigServer(t *testing.T) {
	h := newHarness(t, "ignition", "qemu", smallNodes)
	snippet := filepath.Join(h.dir, "refresh.bu")
	if err := os.WriteFile(filepath.Join(h.dir, "lab.yaml"), []byte(fmt.Sprintf(ignitionLab, h.lab, "[]", nodesYAML(smallNodes))), 0o644); err != nil {
		t.Fatal(err)
	}
	before := h.residue()
	step := h.stepTimer()
	h.kubelab(upTimeout, "up")
	h.requireReady()
	step("up")

	fetches := h.configFetches()
	for _, n := range smallNodes {
		if got := fetches[n]; got != 1 {
			t.Errorf("%s fetched its config %d times with status 200, want once (fetch log: %v)", n, got, fetches)
		}
		console := filepath.Join(h.dir, "clusters", "k1", "nodes", n, "console.log")
		data, _ := os.ReadFile(console)
		for _, want := range []string{"kubelab-ignition: first boot, platform metal", "ignition[files]: ", "kubelab-ignition: done"} {
			if !strings.Contains(string(data), want) {
				t.Errorf("%s's console lacks %q", n, want)
			}
		}
		if strings.Contains(string(data), "KUBELAB-IGNITION-FAILED") {
			t.Errorf("%s: Ignition failed:\n%s", n, tail(console, 40))
		}
		// networkd keeps a lease file per interface it got a lease for.
		out := h.kubelab(shortTimeout, "ssh", n, "test ! -e /boot/ignition.firstboot && grep -c DHCP=ipv4 /etc/systemd/network/10-kubelab-eth0.network && test -n \"$(ls /run/systemd/netif/leases)\" && hostname")
		if lastLine(out) != n {
			t.Errorf("%s: first-boot flag left, no DHCP network file or lease, or wrong hostname:\n%s", n, out)
		}
	}
	h.requireLeases()
	step("checks")

	// The guide's refresh: a changed config, applied over the kept disk.
	machineID := h.kubelab(shortTimeout, "ssh", "w1", "touch /root/kept-by-refresh && cat /etc/machine-id")
	if err := os.WriteFile(snippet, []byte(refreshSnippet), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "lab.yaml"), []byte(fmt.Sprintf(ignitionLab, h.lab, "["+snippet+"]", nodesYAML(smallNodes))), 0o644); err != nil {
		t.Fatal(err)
	}
	out := h.kubelab(upTimeout, "refresh", "w1")
	if !strings.Contains(out, "firstboot") {
		t.Errorf("refresh of a running Ignition node did not keep its disk (no firstboot phase):\n%s", out)
	}
	h.requireReady()
	after := h.kubelab(shortTimeout, "ssh", "w1", "test -e /root/kept-by-refresh && cat /etc/kubelab-refreshed && test ! -e /boot/ignition.firstboot && cat /etc/machine-id")
	if !strings.Contains(after, "applied by a refresh") {
		t.Errorf("w1 after refresh: disk not kept or new config not applied:\n%s", after)
	}
	if id := lastLine(after); id == "" || id == lastLine(machineID) {
		t.Errorf("w1 kept its machine id %q across refresh (before %q)", id, lastLine(machineID))
	}
	if got := h.configFetches()["w1"]; got != 2 {
		t.Errorf("w1 fetched its config %d times, want 2 (up and refresh)", got)
	}
	step("refresh w1")

	h.kubelab(shortTimeout, "destroy")
	if _, err := os.Stat(filepath.Join(h.dir, "serve", "serve.pid")); !os.IsNotExist(err) {
		t.Errorf("destroy left the config server's pid file: %v", err)
	}
	if d := before.diff(h.residue()); len(d) > 0 {
		t.Fatalf("destroy left residue:\n%s", strings.Join(d, "\n"))
	}
	step("destroy")
}

// configFetches counts, per node, the fetches of its own Ignition config
// that the config server answered with 200, from the node's own address
// (the server refuses any other).
func (h *harness) configFetches() map[string]int {
	h.t.Helper()
	log, err := os.ReadFile(filepath.Join(h.dir, "serve", "fetch.log"))
	if err != nil {
		h.t.Fatalf("config server fetch log: %v", err)
	}
	counts := map[string]int{}
	for _, line := range strings.Split(string(log), "\n") {
		var e struct {
			Remote, Path, Node string
			Status             int
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		// Node is "cluster/node"; the path is /cluster/node/<token>/file.
		if strings.HasPrefix(e.Path, "/"+e.Node+"/") && strings.HasSuffix(e.Path, "/config.ign") && e.Status == 200 {
			counts[strings.TrimPrefix(e.Node, "k1/")]++
		}
	}
	// Tokens never reach the log.
	tokens, _ := os.ReadFile(filepath.Join(h.dir, "serve", "tokens.json"))
	var byNode map[string]string
	if err := json.Unmarshal(tokens, &byNode); err != nil || len(byNode) == 0 {
		h.t.Fatalf("config server tokens: %v", err)
	}
	for node, tok := range byNode {
		if strings.Contains(string(log), tok) {
			h.t.Errorf("the fetch log holds %s's token", node)
		}
	}
	return counts
}

// requireLeases: dnsmasq's log shows each node acknowledged at its planned
// address for its MAC.
func (h *harness) requireLeases() {
	h.t.Helper()
	log, err := os.ReadFile(filepath.Join(h.dir, "hostnet", "dnsmasq.log"))
	if err != nil {
		h.t.Fatalf("dnsmasq log: %v", err)
	}
	out := h.kubelab(shortTimeout, "plan", "-o", "json")
	var p struct {
		Clusters []struct {
			Nodes []struct{ Name, Address, MAC string }
		}
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &p); err != nil {
		h.t.Fatalf("plan -o json: %v", err)
	}
	for _, n := range p.Clusters[0].Nodes {
		re := regexp.MustCompile(`DHCPACK\([^)]*\) ` + regexp.QuoteMeta(n.Address) + ` ` + regexp.QuoteMeta(strings.ToLower(n.MAC)))
		if !re.Match(log) {
			h.t.Errorf("no DHCPACK of %s for %s (%s) in dnsmasq's log:\n%s", n.Address, n.Name, n.MAC, drivertest.Tail(string(log), 20))
		}
	}
}

// lastLine is the last line of a command's output, trimmed.
func lastLine(s string) string { return strings.TrimSpace(drivertest.Tail(strings.TrimSpace(s), 1)) }
