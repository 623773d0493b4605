package pki

import (
	"os"
	"path/filepath"
	"sync"
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

// BenchmarkEnsureLab9x10Parallel creates the clusters' PKIs concurrently,
// which is safe: each cluster has its own directory and nothing is shared.
func BenchmarkEnsureLab9x10Parallel(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "lab-9x10.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	p := mustPlan(b, string(data))
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		var wg sync.WaitGroup
		errs := make([]error, len(p.Clusters))
		for i, c := range p.Clusters {
			wg.Go(func() { _, _, errs[i] = Ensure(dir, p.Lab, c, p.Network, Options{}) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
