package nodeconfig

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/versions"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenFile is a File as a person reads it: mode in octal, text contents.
type goldenFile struct {
	Path     string `json:"path"`
	Mode     string `json:"mode"`
	Owner    string `json:"owner"`
	Group    string `json:"group"`
	Secret   bool   `json:"secret,omitempty"`
	Contents string `json:"contents"`
}

type goldenNode struct {
	Node
	Files       []goldenFile `json:"files"`
	SSHHostKeys []goldenFile `json:"sshHostKeys"`
	Derived     []goldenFile `json:"derived"` // NetworkdFiles and SystemFiles
	Units       []Unit       `json:"units"`
}

// goldenView replaces every piece of key material (generated at test time)
// by a placeholder naming it.
func goldenView(n Node, repl map[string]string) goldenNode {
	// Longest first, so a key inside a kubeconfig is not half-replaced.
	var olds []string
	for o := range repl {
		olds = append(olds, o)
	}
	sort.Slice(olds, func(i, j int) bool { return len(olds[i]) > len(olds[j]) })
	var pairs []string
	for _, o := range olds {
		pairs = append(pairs, o, repl[o])
	}
	r := strings.NewReplacer(pairs...)
	conv := func(fs []File) []goldenFile {
		var out []goldenFile
		for _, f := range fs {
			out = append(out, goldenFile{Path: f.Path, Mode: fmt.Sprintf("%04o", f.Mode), Owner: f.Owner, Group: f.Group,
				Secret: f.Secret, Contents: r.Replace(string(f.Contents))})
		}
		return out
	}
	return goldenNode{
		Node:        n,
		Files:       conv(n.Files),
		SSHHostKeys: conv(n.SSHHostKeys),
		Derived:     conv(append(n.NetworkdFiles(), n.SystemFiles()...)),
		Units:       n.Units,
	}
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		golden, podNet string
		nodes          []string
		node           string
	}{
		{"default-cp1.json", "routes", defaultNodes, "cp1"},
		{"default-w1.json", "routes", defaultNodes, "w1"},
		{"flannel-w1.json", "flannel", defaultNodes, "w1"},
		{"ha-cp2.json", "routes", haNodes, "cp2"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			p := planFor(t, labSpec(tc.podNet, "", tc.nodes...))
			c := p.Clusters[0]
			var pn plan.Node
			for _, n := range c.Nodes {
				if n.Name == tc.node {
					pn = n
				}
			}
			creds := newFakeCreds()
			hk := hostKey(t)
			n, err := Build(Input{Plan: p, Cluster: c, Node: pn, Creds: creds, Versions: versions.Default(),
				SSHAuthorizedKeys: []string{testAuthorizedKey}, SSHHostKey: hk, Source: "lab.yaml"})
			if err != nil {
				t.Fatal(err)
			}
			repl := creds.placeholders()
			repl[string(hk.Private)] = "<ssh host private key>\n"
			repl[string(hk.Public)] = "<ssh host public key>\n"
			got, err := json.MarshalIndent(goldenView(n, repl), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			if bytes.Contains(got, []byte("PRIVATE KEY")) || bytes.Contains(got, []byte("BEGIN CERTIFICATE")) {
				t.Fatal("key material left in the golden view; the placeholders missed some")
			}
			path := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the golden file; if the change is intended, run go test ./internal/nodeconfig -run TestGolden -update and review the diff.\n%s", tc.golden, firstDiff(string(want), string(got)))
			}
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, x, y)
		}
	}
	return ""
}
