package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

func TestCheckCommandErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lab.yaml"), []byte(certsLab), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown cluster", []string{"nope"}, `no cluster "nope" in the lab; clusters are one, two`},
		{"not up yet", []string{"one"}, filepath.Join(dir, "clusters", "one", "pki", "kubeconfigs", "admin.kubeconfig")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(append([]string{"--dir", dir, "check"}, tc.args...), &out, &errOut)
			if code == 0 || !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want it to mention %q", code, errOut.String(), tc.want)
			}
		})
	}
}

func TestNodePortTargetIsTheForwardTarget(t *testing.T) {
	lab, err := spec.Parse([]byte(certsLab))
	if err != nil {
		t.Fatal(err)
	}
	spec.ApplyDefaults(lab)
	p, err := plan.New(lab, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Clusters {
		got, ok := nodePortTarget(p, c)
		var want string
		for _, f := range p.Forwards {
			if f.Purpose == "nodeports" && f.Cluster == c.Name {
				want = f.Target.String()
			}
		}
		if !ok || got != want || want == "" {
			t.Errorf("cluster %s: target %q, %v; the plan forwards NodePorts to %q", c.Name, got, ok, want)
		}
	}
}
