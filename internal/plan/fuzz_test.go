package plan

import (
	"testing"

	"github.com/kubelab/kubelab/internal/spec"
)

// FuzzLabSpec feeds arbitrary lab.yaml text through parsing, defaults,
// validation and planning. Whatever the input, nothing may panic, and a spec
// that validates must plan deterministically. The corpus lives in
// testdata/fuzz/FuzzLabSpec.
func FuzzLabSpec(f *testing.F) {
	for _, topo := range spec.Topologies() {
		tmpl, _ := spec.Template(topo)
		f.Add(string(tmpl))
	}
	f.Add(twoClusters)
	f.Add(LargeLabYAML(2, 3))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, yaml string) {
		lab, err := spec.Parse([]byte(yaml))
		if err != nil {
			return
		}
		spec.ApplyDefaults(lab)
		if _, err := spec.Validate(lab, dir); err != nil {
			return
		}
		p1, err1 := New(lab, dir)
		p2, err2 := New(lab, dir)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("planning the same spec twice disagreed: %v vs %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		j1, _ := p1.JSON()
		j2, _ := p2.JSON()
		if string(j1) != string(j2) {
			t.Fatal("planning the same spec twice gave different plans")
		}
	})
}
