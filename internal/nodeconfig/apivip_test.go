package nodeconfig

import (
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// Every control plane of an HA cluster is a VRRP peer of exactly the
// others, with its own priority and the same virtual address; nodes of
// clusters with one control plane get no keepalived at all.
func TestAPIVirtualAddressPeers(t *testing.T) {
	p := planFor(t, labSpec("routes", "", haNodes...))
	c := p.Clusters[0]
	nodes := buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() })
	field := func(conf, key string) []string {
		return regexp.MustCompile(`(?m)^\s*` + key + `\s+(\S+)`).FindStringSubmatch(conf)
	}
	priorities := map[string]bool{}
	routerIDs := map[string]bool{}
	for _, cp := range c.NodesWithRole(spec.RoleControlPlane) {
		f, ok := fileByPath(nodes[cp.Name], KeepalivedConfig)
		if !ok {
			t.Fatalf("%s has no %s", cp.Name, KeepalivedConfig)
		}
		conf := string(f.Contents)
		if m := field(conf, "unicast_src_ip"); m == nil || m[1] != cp.Address.String() {
			t.Errorf("%s: unicast_src_ip %v, want its own address %s", cp.Name, m, cp.Address)
		}
		peerBlock := regexp.MustCompile(`(?s)unicast_peer \{(.*?)\}`).FindStringSubmatch(conf)
		if peerBlock == nil {
			t.Fatalf("%s: no unicast_peer block:\n%s", cp.Name, conf)
		}
		var want []string
		for _, o := range c.NodesWithRole(spec.RoleControlPlane) {
			if o.Name != cp.Name {
				want = append(want, o.Address.String())
			}
		}
		if got := strings.Fields(peerBlock[1]); !slices.Equal(got, want) {
			t.Errorf("%s: peers %v, want %v", cp.Name, got, want)
		}
		if !strings.Contains(conf, c.APIVIP.String()+"/24 dev eth0") {
			t.Errorf("%s: virtual address %s/24 on eth0 missing:\n%s", cp.Name, c.APIVIP, conf)
		}
		for _, must := range []string{"state BACKUP", "nopreempt", "track_script", "/dev/tcp/127.0.0.1/6443"} {
			if !strings.Contains(conf, must) {
				t.Errorf("%s: %q missing", cp.Name, must)
			}
		}
		priorities[field(conf, "priority")[1]] = true
		routerIDs[field(conf, "virtual_router_id")[1]] = true
	}
	if len(priorities) != 3 || len(routerIDs) != 1 {
		t.Errorf("priorities %v (want 3 distinct), router IDs %v (want one shared)", priorities, routerIDs)
	}
	if _, ok := fileByPath(nodes["w1"], KeepalivedConfig); ok {
		t.Error("worker w1 got a keepalived configuration")
	}

	single := planFor(t, labSpec("routes", "", defaultNodes...))
	for name, n := range buildAll(t, single, func(plan.Cluster) Credentials { return newFakeCreds() }) {
		if _, ok := fileByPath(n, KeepalivedConfig); ok || slices.Contains(n.Enable, "keepalived.service") {
			t.Errorf("%s of a one-control-plane cluster runs keepalived", name)
		}
	}
}

// The control planes' API servers start one after the other: the first
// never waits, every later one waits for the one before it (or, with that
// node down, the cluster's endpoint), and a cluster with one control plane
// has no such wait.
func TestAPIServersStartInTurn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []string
		waits map[string]bool
	}{
		{"ha", haNodes, map[string]bool{"cp1": false, "cp2": true, "cp3": true, "w1": false}},
		{"one control plane", defaultNodes, map[string]bool{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planFor(t, labSpec("routes", "", tc.nodes...))
			c := p.Clusters[0]
			for name, n := range buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() }) {
				f, hasScript := fileByPath(n, AwaitAPIEndpoint)
				unit, _ := unitByName(n, "kube-apiserver.service")
				hasPre := strings.Contains(unit.Contents, "ExecStartPre=/bin/sh "+AwaitAPIEndpoint)
				if want := tc.waits[name]; hasScript != want || hasPre != want {
					t.Errorf("%s: wait script %v, ExecStartPre %v; want %v", name, hasScript, hasPre, want)
				}
				if !hasScript {
					continue
				}
				script := string(f.Contents)
				prev := map[string]string{"cp2": "192.168.100.10", "cp3": "192.168.100.11"}[name]
				for _, must := range []string{"ready " + c.APIVIP.String() + " " + c.APIVIP.String() + ":6443", "listens " + prev + " 22", "ready " + prev + " " + prev + ":6443",
					"get --raw=/readyz", "+ 1200 ))", "exit 0"} {
					if !strings.Contains(script, must) {
						t.Errorf("%s: %q missing from the wait script:\n%s", name, must, script)
					}
				}
				if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
					t.Errorf("%s: the wait script does not parse: %v\n%s", name, err, out)
				}
				if !strings.Contains(unit.Contents, "TimeoutStartSec=infinity") {
					t.Errorf("%s: the API server's start would time out during the wait", name)
				}
			}
		})
	}
}
