package pki

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// testLab is one cluster: a combined etcd/control-plane node and two
// workers, so addresses are .10, .11, .12 of 192.168.100.0/24.
const testLab = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: t
clusters:
- name: one
  index: 1
  kubernetesVersion: v1.37.2
  nodes:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
  - {name: w2, roles: [worker]}
`

func mustPlan(t testing.TB, yaml string) *plan.Plan {
	t.Helper()
	lab, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	spec.ApplyDefaults(lab)
	if _, err := spec.Validate(lab, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(lab, "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustEnsure(t testing.TB, dir string, p *plan.Plan, ci int) (*Cluster, Report) {
	t.Helper()
	cl, rep, err := Ensure(dir, p.Lab, p.Clusters[ci], p.Network, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return cl, rep
}

// requireTool fails (never skips) under CI when a tool is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return path
}

type fileState struct {
	data []byte
	mode os.FileMode
}

// snapshot reads every file and directory under dir.
func snapshot(t testing.TB, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		st := fileState{mode: info.Mode()}
		if !info.IsDir() {
			if st.data, err = os.ReadFile(path); err != nil {
				return err
			}
		}
		out[rel] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
