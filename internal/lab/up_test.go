package lab

import (
	"testing"
	"time"

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
