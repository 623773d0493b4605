package pki

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkEnsureLab9x10 creates the whole PKI of the largest lab in an
// empty directory: 9 clusters x (4 CAs + 52 leaves + sa + 12 kubeconfigs).
func BenchmarkEnsureLab9x10(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "lab-9x10.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	p := mustPlan(b, string(data))
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		for _, c := range p.Clusters {
			if _, _, err := Ensure(dir, p.Lab, c, p.Network, Options{}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkEnsureLab9x10Reuse is a re-render: everything exists and is
// read, checked and reused.
func BenchmarkEnsureLab9x10Reuse(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "lab-9x10.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	p := mustPlan(b, string(data))
	dir := b.TempDir()
	for _, c := range p.Clusters {
		if _, _, err := Ensure(dir, p.Lab, c, p.Network, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		for _, c := range p.Clusters {
			_, rep, err := Ensure(dir, p.Lab, c, p.Network, Options{})
			if err != nil {
				b.Fatal(err)
			}
			if len(rep.Changes) != 0 {
				b.Fatalf("re-run changed things:\n%s", rep)
			}
		}
	}
}
