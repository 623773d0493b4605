// Package render_test renders the real node descriptions of every topology
// (spec -> plan -> pki -> nodeconfig.Build) through all three renderers and
// checks each result with the formats' own tools.
package render_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v34 "github.com/coreos/ignition/v2/config/v3_4"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/render/cloudinit"
	"github.com/kubelab/kubelab/internal/render/ignition"
	"github.com/kubelab/kubelab/internal/render/overlay"
	"github.com/kubelab/kubelab/internal/render/rendertest"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

const authorizedKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubelabTestKeyOneNotARealKeyxxxxxxxxxxxxx admin@host"

func buildTopology(t testing.TB, topology string) []nodeconfig.Node {
	t.Helper()
	raw, err := spec.Template(topology)
	if err != nil {
		t.Fatal(err)
	}
	lab, err := spec.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	spec.ApplyDefaults(lab)
	dir := t.TempDir()
	if _, err := spec.Validate(lab, dir); err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []nodeconfig.Node
	for _, c := range p.Clusters {
		creds, _, err := pki.Ensure(dir, p.Lab, c, p.Network, pki.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes {
			keys, err := rendertest.GenerateHostKeys()
			if err != nil {
				t.Fatal(err)
			}
			node, err := nodeconfig.Build(nodeconfig.Input{Plan: p, Cluster: c, Node: n, Creds: creds,
				Versions: versions.Default(), SSHAuthorizedKeys: []string{authorizedKey},
				SSHHostKey: nodeconfig.SSHHostKey{Type: "ed25519", Private: keys[0].Contents, Public: keys[1].Contents},
				Source:     "lab.yaml"})
			if err != nil {
				t.Fatalf("build %s: %v", n.Name, err)
			}
			out = append(out, node)
		}
	}
	return out
}

func TestTopologies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs cloud-init schema for every node")
	}
	cloudInit, ciErr := exec.LookPath("cloud-init")
	if ciErr != nil && os.Getenv("CI") == "true" {
		t.Fatalf("cloud-init is required: %v", ciErr)
	}
	for _, topology := range spec.Topologies() {
		t.Run(topology, func(t *testing.T) {
			for _, n := range buildTopology(t, topology) {
				t.Run(n.Name, func(t *testing.T) {
					t.Parallel()
					ign, err := ignition.Render(n, nil)
					if err != nil {
						t.Fatalf("ignition: %v", err)
					}
					if _, rpt, err := v34.Parse(ign); err != nil || len(rpt.Entries) > 0 {
						t.Fatalf("ignition parse: %v\n%s", err, rpt)
					}

					ov, err := overlay.Render(n)
					if err != nil {
						t.Fatalf("overlay: %v", err)
					}
					if len(ov)%512 != 0 {
						t.Errorf("overlay size %d", len(ov))
					}

					ci, err := cloudinit.Render(n)
					if err != nil {
						t.Fatalf("cloud-init: %v", err)
					}
					if ciErr != nil {
						return
					}
					p := filepath.Join(t.TempDir(), cloudinit.UserData)
					if err := os.WriteFile(p, ci.UserData, 0o600); err != nil {
						t.Fatal(err)
					}
					out, err := exec.Command(cloudInit, "schema", "--config-file", p).CombinedOutput()
					if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
						t.Fatalf("cloud-init schema: %v\n%s", err, out)
					}
				})
			}
		})
	}
}

// BenchmarkRender renders the first control-plane node of the default
// topology in each format.
func BenchmarkRender(b *testing.B) {
	nodes := buildTopology(b, spec.Topologies()[0])
	n := nodes[0]
	b.Run("ignition", func(b *testing.B) {
		for b.Loop() {
			if _, err := ignition.Render(n, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cloudinit", func(b *testing.B) {
		for b.Loop() {
			if _, err := cloudinit.Render(n); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("overlay", func(b *testing.B) {
		for b.Loop() {
			if _, err := overlay.Render(n); err != nil {
				b.Fatal(err)
			}
		}
	})
}
