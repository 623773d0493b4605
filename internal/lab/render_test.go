package lab

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

func renderLab(t testing.TB, dir, yaml string, allFormats bool) RenderResult {
	t.Helper()
	l := Layout{Dir: dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Spec(), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	lab, _, err := spec.Load(l.Spec())
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Render(RenderInput{Layout: l, Lab: lab, Plan: p, Versions: versions.Default(), AllFormats: allFormats})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// snapshot reads every file under dir with its mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == ".lock" {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = info.Mode().String() + "\n" + string(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func template(t *testing.T, topo string) string {
	t.Helper()
	data, err := spec.Template(topo)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestRenderIsIdempotent: rendering again changes no byte and no mode, so
// keys are reused, never rotated.
func TestRenderIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	renderLab(t, dir, template(t, "xen-guide"), true)
	first := snapshot(t, dir)
	renderLab(t, dir, template(t, "xen-guide"), true)
	second := snapshot(t, dir)
	if len(first) != len(second) {
		t.Fatalf("second render changed the file set: %d -> %d files", len(first), len(second))
	}
	for name, content := range first {
		if second[name] != content {
			t.Errorf("second render changed %s", name)
		}
	}
}

// TestRenderIsDeterministic: keys are the only randomness. Render, delete
// every generated configuration but keep the keys, render again: every
// configuration comes back byte for byte.
func TestRenderIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	renderLab(t, dir, template(t, "ha"), true)
	before := snapshot(t, dir)
	var removed int
	for _, pattern := range []string{"clusters/*/nodes/*/overlay.tar", "clusters/*/nodes/*/ignition.json",
		"clusters/*/nodes/*/cloud-init", "clusters/*/addons", "ssh/known_hosts"} {
		matches, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				t.Fatal(err)
			}
			removed++
		}
	}
	if removed < 10 {
		t.Fatalf("test bug: removed only %d generated files", removed)
	}
	renderLab(t, dir, template(t, "ha"), true)
	after := snapshot(t, dir)
	for name, content := range before {
		if after[name] != content {
			t.Errorf("%s differs between two renders with the same keys", name)
		}
	}
	if len(before) != len(after) {
		t.Errorf("file sets differ: %d vs %d", len(before), len(after))
	}
}

// TestRenderedSecretsArePrivate: every file holding a private key is 0600.
func TestRenderedSecretsArePrivate(t *testing.T) {
	dir := t.TempDir()
	renderLab(t, dir, template(t, "default"), true)
	for name, content := range snapshot(t, dir) {
		mode, data, _ := strings.Cut(content, "\n")
		secret := strings.Contains(data, "PRIVATE KEY") || strings.HasSuffix(name, ".tar") ||
			strings.HasSuffix(name, ".kubeconfig") || strings.Contains(name, "cloud-init/") || strings.HasSuffix(name, "ignition.json")
		if secret && mode != "-rw-------" {
			t.Errorf("%s holds secrets but has mode %s", name, mode)
		}
	}
}

func TestRenderOnlyNodesOwnFormatByDefault(t *testing.T) {
	dir := t.TempDir()
	yaml := strings.Replace(template(t, "default"), "      - name: w1\n        roles: [worker]\n",
		"      - name: w1\n        roles: [worker]\n        provisioning: cloud-init\n", 1)
	res := renderLab(t, dir, yaml, false)
	for _, n := range res.Nodes {
		want := spec.ProvisionOverlay
		if n.Node == "w1" {
			want = spec.ProvisionCloudInit
		}
		if len(n.Formats) != 1 || n.Formats[want] == "" {
			t.Errorf("%s rendered %v, want only %s", n.Node, n.Formats, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "clusters/k1/nodes/w1/cloud-init/user-data")); err != nil {
		t.Error(err)
	}
	known, _ := os.ReadFile(filepath.Join(dir, "ssh", "known_hosts"))
	if !bytes.Contains(known, []byte("192.168.100.11,[127.0.0.1]:8011 ssh-ed25519 ")) {
		t.Errorf("known_hosts does not pin w1:\n%s", known)
	}
}

// BenchmarkRender9x10 is plan + PKI + render of the largest lab (nine
// clusters of ten nodes) into a fresh lab directory: the cold path, with
// every key and certificate made.
func BenchmarkRender9x10(b *testing.B) {
	yaml := plan.LargeLabYAML(9, 10)
	for i := 0; i < b.N; i++ {
		renderLab(b, b.TempDir(), yaml, false)
	}
}

// BenchmarkRerender9x10 renders the same lab again: everything is reused.
func BenchmarkRerender9x10(b *testing.B) {
	yaml := plan.LargeLabYAML(9, 10)
	dir := b.TempDir()
	renderLab(b, dir, yaml, false)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		renderLab(b, dir, yaml, false)
	}
}
