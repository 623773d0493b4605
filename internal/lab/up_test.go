package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

func TestAPIServerTimeoutGrowsWithControlPlanes(t *testing.T) {
	cp := func(name string) plan.Node {
		return plan.Node{Name: name, Roles: []string{spec.RoleControlPlane, spec.RoleEtcd}}
	}
	w := plan.Node{Name: "w1", Roles: []string{spec.RoleWorker}}
	tests := []struct {
		name string
		cls  []plan.Cluster
		want time.Duration
	}{
		{"no cluster", nil, 10 * time.Minute},
		{"one control plane", []plan.Cluster{{Nodes: []plan.Node{cp("cp1"), w}}}, 10 * time.Minute},
		{"three control planes", []plan.Cluster{{Nodes: []plan.Node{cp("cp1"), cp("cp2"), cp("cp3"), w}}}, 20 * time.Minute},
		{"the largest cluster counts", []plan.Cluster{{Nodes: []plan.Node{cp("a")}}, {Nodes: []plan.Node{cp("b"), cp("c")}}}, 15 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := apiServerTimeout(tt.cls); got != tt.want {
				t.Fatalf("apiServerTimeout = %s, want %s", got, tt.want)
			}
		})
	}
}

// Workers boot after the API server (the workers phase) when some must
// boot; everything boots at once with --boot-together, when the workers
// only resume or run already, or when one group is empty.
func TestBootOrder(t *testing.T) {
	mixed := []plan.Cluster{{Name: "k1", Nodes: []plan.Node{
		{Name: "cp1", Roles: []string{spec.RoleControlPlane, spec.RoleEtcd}},
		{Name: "e1", Roles: []string{spec.RoleEtcd}},
		{Name: "w1", Roles: []string{spec.RoleWorker}},
	}}}
	workersOnly := []plan.Cluster{{Name: "k1", Nodes: []plan.Node{{Name: "w1", Roles: []string{spec.RoleWorker}}}}}
	names := func(cls []plan.Cluster) string {
		var out []string
		for _, c := range cls {
			for _, n := range c.Nodes {
				out = append(out, n.Name)
			}
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name       string
		cls        []plan.Cluster
		together   bool
		state      driver.State
		now, later string
	}{
		{"stopped workers wait", mixed, false, driver.StateStopped, "cp1,e1", "w1"},
		{"--boot-together", mixed, true, driver.StateStopped, "cp1,e1,w1", ""},
		{"running workers", mixed, false, driver.StateRunning, "cp1,e1,w1", ""},
		{"suspended workers", mixed, false, driver.StateSuspended, "cp1,e1,w1", ""},
		{"only workers", workersOnly, false, driver.StateStopped, "w1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Env{Layout: Layout{Dir: t.TempDir()}, Lab: &spec.Lab{Name: "lab"}, Plan: &plan.Plan{},
				Driver: &recordingDriver{state: tc.state}, BootTogether: tc.together}
			now, later := e.bootOrder(context.Background(), tc.cls)
			if names(now) != tc.now || names(later) != tc.later {
				t.Errorf("now %q later %q, want %q and %q", names(now), names(later), tc.now, tc.later)
			}
		})
	}
}
