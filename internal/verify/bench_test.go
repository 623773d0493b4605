package verify

import (
	"testing"
	"time"
)

// BenchmarkAPIServerStartup measures a fresh etcd + kube-apiserver, started
// with the rendered flags, from exec to an authenticated /readyz 200.
// Run with -benchtime=3x; each iteration costs seconds.
func BenchmarkAPIServerStartup(b *testing.B) {
	var total time.Duration
	n := 0
	for b.Loop() {
		env := startControlPlane(b)
		total += env.waitReady(3 * time.Minute)
		n++
		env.stop()
	}
	b.ReportMetric(total.Seconds()/float64(n), "s-to-readyz/op")
}
