package verify

import (
	"testing"
	"time"
)

// BenchmarkAPIServerStartup measures a fresh etcd + kube-apiserver, started
// with the rendered flags, from exec to an authenticated /readyz 200.
func BenchmarkAPIServerStartup(b *testing.B) {
	for b.Loop() {
		env := startControlPlane(b)
		took := env.waitReady(3 * time.Minute)
		b.ReportMetric(took.Seconds(), "s-to-readyz")
		env.stop()
	}
}
