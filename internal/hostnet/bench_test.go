package hostnet

import (
	"context"
	"testing"

	"github.com/vishvananda/netns"
)

// BenchmarkApplyRemove measures a full Apply and Remove of a two-node lab
// in its own namespace (the host-network share of `up` and `destroy`).
func BenchmarkApplyRemove(b *testing.B) {
	for _, mode := range []string{"host", "namespace"} {
		b.Run(mode, func(b *testing.B) {
			requireNetAdmin(b)
			_, host := newNS(b, "host")
			c := testConfig(b, "")
			if mode == "namespace" {
				c.Network.Namespace = "kltest-bench-lab"
				b.Cleanup(func() {
					if namespaceExists(c.Network.Namespace) {
						netns.DeleteNamed(c.Network.Namespace)
					}
				})
			}
			for i := 0; i < b.N; i++ {
				if err := inNS(host, func() error {
					if _, err := Apply(context.Background(), c); err != nil {
						return err
					}
					return Remove(context.Background(), c)
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApplyNoop measures an Apply with nothing to change (the cost of
// `up` on a running lab).
func BenchmarkApplyNoop(b *testing.B) {
	requireNetAdmin(b)
	_, host := newNS(b, "host")
	c := testConfig(b, "")
	apply(b, host, c)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := inNS(host, func() error { _, err := Apply(context.Background(), c); return err }); err != nil {
			b.Fatal(err)
		}
	}
}
