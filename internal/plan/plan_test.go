package plan

import (
	"bytes"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/spec"
)

var update = flag.Bool("update", false, "rewrite golden files")

func mustLab(t testing.TB, yaml string) *spec.Lab {
	t.Helper()
	lab, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	spec.ApplyDefaults(lab)
	if _, err := spec.Validate(lab, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	return lab
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test -update if the change is intended)\n--- got ---\n%s", path, got)
	}
}

// topologyPlan plans the lab.yaml `kubelab init -t topo` writes.
func topologyPlan(t *testing.T, topo string) *Plan {
	t.Helper()
	tmpl, err := spec.Template(topo)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(mustLab(t, string(tmpl)), "/lab")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTopologyGoldens plans every `kubelab init` topology and compares the
// text and JSON renderings with golden files.
func TestTopologyGoldens(t *testing.T) {
	for _, topo := range spec.Topologies() {
		t.Run(topo, func(t *testing.T) {
			p := topologyPlan(t, topo)
			js, err := p.JSON()
			if err != nil {
				t.Fatal(err)
			}
			golden(t, topo+".json", js)
			golden(t, topo+".txt", p.Text())
			golden(t, topo+".svg", p.SVG())
		})
	}
}

// The diagram is well-formed XML and shows every node's name, address and
// MAC, every forward's host port and the bridge.
func TestDiagramContents(t *testing.T) {
	for _, topo := range spec.Topologies() {
		t.Run(topo, func(t *testing.T) {
			p := topologyPlan(t, topo)
			svg := p.SVG()
			d := xml.NewDecoder(bytes.NewReader(svg))
			var texts []string
			for {
				tok, err := d.Token()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("not well-formed XML: %v", err)
				}
				if cd, ok := tok.(xml.CharData); ok {
					texts = append(texts, string(cd))
				}
			}
			all := strings.Join(texts, "\n")
			want := []string{p.Network.Bridge, p.Network.Gateway.String()}
			for _, c := range p.Clusters {
				for _, n := range c.Nodes {
					want = append(want, n.Name, n.Address.String(), n.MAC)
				}
			}
			for _, f := range p.Forwards {
				want = append(want, fmt.Sprintf(":%d", f.HostFrom))
			}
			for _, w := range want {
				if !strings.Contains(all, w) {
					t.Errorf("%q is not in the diagram", w)
				}
			}
			if !bytes.Equal(svg, p.SVG()) {
				t.Error("two renderings differ")
			}
		})
	}
}

func TestDefaultsFollowTheGuide(t *testing.T) {
	tmpl, _ := spec.Template("xen-guide")
	p, err := New(mustLab(t, string(tmpl)), "/lab")
	if err != nil {
		t.Fatal(err)
	}
	c := p.Clusters[0]
	want := map[string][2]string{ // node -> address, MAC
		"master": {"192.168.100.10", "00:16:3e:4e:31:10"},
		"etcd1":  {"192.168.100.11", "00:16:3e:4e:31:11"},
		"etcd3":  {"192.168.100.13", "00:16:3e:4e:31:13"},
		"node1":  {"192.168.100.14", "00:16:3e:4e:31:14"},
	}
	for _, n := range c.Nodes {
		if w, ok := want[n.Name]; ok && (n.Address.String() != w[0] || n.MAC != w[1]) {
			t.Errorf("%s: %s %s, want %s %s", n.Name, n.Address, n.MAC, w[0], w[1])
		}
	}
	_, node1, _ := p.Node("node1")
	if node1.PodCIDR.String() != "172.16.14.0/24" || node1.SSHHostPort != 8014 {
		t.Errorf("node1 pod %s ssh %d, want 172.16.14.0/24 and 8014", node1.PodCIDR, node1.SSHHostPort)
	}
	_, master, _ := p.Node("master")
	if master.PodCIDR.IsValid() {
		t.Errorf("control-plane-only node got a pod CIDR %s", master.PodCIDR)
	}
	if c.APIServer.String() != "192.168.100.10:6443" || c.APIHostPort != 8101 || c.NodePortFrom != 31000 || c.NodePortTo != 31999 {
		t.Errorf("api %s host %d nodeports %d-%d", c.APIServer, c.APIHostPort, c.NodePortFrom, c.NodePortTo)
	}
	if c.APIServiceIP.String() != "10.199.0.1" || c.DNSServiceIP.String() != "10.199.0.10" {
		t.Errorf("service IPs %s %s", c.APIServiceIP, c.DNSServiceIP)
	}
	if p.Network.Gateway.String() != "192.168.100.1" || p.Network.Failsafe.String() != "192.168.100.254" {
		t.Errorf("gateway %s failsafe %s", p.Network.Gateway, p.Network.Failsafe)
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	tmpl, _ := spec.Template("ha")
	var first []byte
	for i := 0; i < 5; i++ {
		p, err := New(mustLab(t, string(tmpl)), "/lab")
		if err != nil {
			t.Fatal(err)
		}
		js, _ := p.JSON()
		if i == 0 {
			first = js
		} else if !bytes.Equal(js, first) {
			t.Fatal("two plans of the same spec differ")
		}
	}
}

const twoClusters = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
clusters:
  - name: k1
    nodes:
      - {name: cp1, roles: [control-plane, etcd]}
      - {name: w1, roles: [worker]}
  - name: k2
    nodes:
      - {name: cp2, roles: [control-plane, etcd]}
      - {name: w2, roles: [worker], address: 192.168.100.25}
`

// TestAllocationErrors covers the bad-input classes only the plan can see.
func TestAllocationErrors(t *testing.T) {
	cases := []struct {
		name, old, new, path, message string
	}{
		{"address outside lab network", "address: 192.168.100.25", "address: 192.168.101.25", "clusters[1].nodes[1].address", "outside the lab network 192.168.100.0/24"},
		{"address outside block", "address: 192.168.100.25", "address: 192.168.100.35", "clusters[1].nodes[1].address", `outside cluster "k2"'s block 192.168.100.20-192.168.100.29`},
		{"duplicate address", "{name: cp1, roles: [control-plane, etcd]}\n      - {name: w1, roles: [worker]}", "{name: cp1, roles: [control-plane, etcd], address: 192.168.100.12}\n      - {name: w1, roles: [worker], address: 192.168.100.12}", "clusters[0].nodes[1].address", "already used by clusters[0].nodes[0]"},
		{"address is the gateway", "kind: Lab\n", "kind: Lab\nnetwork: {gateway: 192.168.100.25}\n", "clusters[1].nodes[1].address", "already used by network.gateway"},
		{"duplicate mac", "{name: w2, roles: [worker], address: 192.168.100.25}", "{name: w2, roles: [worker], address: 192.168.100.25, mac: '00:16:3e:4e:31:10'}", "clusters[1].nodes[1].mac", "already used by clusters[0].nodes[0]"},
		{"api port collides across clusters", "  - name: k2\n", "  - name: k2\n    apiPort: 8101\n", "clusters[1].apiPort", "collide with clusters[0].apiPort"},
		{"api port collides with ssh", "  - name: k2\n", "  - name: k2\n    apiPort: 8020\n", "clusters[1].apiPort", "collide with clusters[1].nodes[0].address (its ssh forward)"},
		{"node ports overlap", "  - name: k2\n", "  - name: k2\n    nodePortRange: 31500-32500\n", "clusters[1].nodePortRange", "collide with clusters[0].nodePortRange"},
		{"too many nodes", "      - {name: w1, roles: [worker]}\n", strings.Repeat("", 0) + manyWorkers(10), "clusters[0].nodes", "has 11 nodes but its block 192.168.100.10-192.168.100.19 holds 10"},
		{"node on the API virtual address", "{name: cp1, roles: [control-plane, etcd]}\n      - {name: w1, roles: [worker]}", "{name: cp1, roles: [control-plane, etcd]}\n      - {name: cpb, roles: [control-plane, etcd]}\n      - {name: w1, roles: [worker], address: 192.168.100.19}", "clusters[0].nodes[2].address", `already used by cluster "k1"'s API virtual address`},
		{"gateway on the API virtual address", "clusters:\n  - name: k1\n    nodes:\n", "network: {gateway: 192.168.100.19}\nclusters:\n  - name: k1\n    nodes:\n      - {name: cpb, roles: [control-plane, etcd]}\n", "clusters[0].nodes", `needs its block's last address 192.168.100.19 for the API's virtual address, but network.gateway uses it`},
		{"no room for the API virtual address", "      - {name: w1, roles: [worker]}\n", "      - {name: cpb, roles: [control-plane]}\n" + manyWorkers(8), "clusters[0].nodes[9]", "the API virtual address"},
		{"pod cidr too small for address numbering", "  - name: k2\n", "  - name: k2\n    podCIDR: 172.16.0.0/20\n", "clusters[1].podCIDR", "gets pod /24 number 25"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(twoClusters, tc.old) {
				t.Fatalf("test bug: %q not in spec", tc.old)
			}
			_, err := New(mustLab(t, strings.Replace(twoClusters, tc.old, tc.new, 1)), "/lab")
			if err == nil {
				t.Fatalf("planned; want an error at %s", tc.path)
			}
			if !strings.Contains(err.Error(), tc.path+": ") {
				t.Errorf("error does not name %s:\n%v", tc.path, err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error lacks %q:\n%v", tc.message, err)
			}
		})
	}
}

func manyWorkers(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString("      - {name: w1x" + string(rune('a'+i)) + ", roles: [worker]}\n")
	}
	return b.String()
}

// BenchmarkPlan9x10 plans the largest lab: nine clusters of ten nodes.
func BenchmarkPlan9x10(b *testing.B) {
	lab := mustLab(b, LargeLabYAML(9, 10))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := New(lab, "/lab"); err != nil {
			b.Fatal(err)
		}
	}
}
