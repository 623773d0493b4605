package plan

import (
	"fmt"
	"strings"
)

// LargeLabYAML writes a lab.yaml with clusters x nodes (one control plane
// with stacked etcd, the rest workers), for benchmarks and scale tests.
func LargeLabYAML(clusters, nodes int) string {
	var b strings.Builder
	b.WriteString("apiVersion: kubelab.dev/v1alpha1\nkind: Lab\nname: big\nclusters:\n")
	for c := 1; c <= clusters; c++ {
		fmt.Fprintf(&b, "  - name: c%d\n    index: %d\n    nodes:\n", c, c)
		for n := 0; n < nodes; n++ {
			roles := "worker"
			if n == 0 {
				roles = "control-plane, etcd"
			}
			fmt.Fprintf(&b, "      - {name: c%dn%d, roles: [%s]}\n", c, n, roles)
		}
	}
	return b.String()
}
