package components

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/versions"
)

// requireTool skips without tool, except under CI=true where a missing
// prerequisite is a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required (hack/install-deps.sh): %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

func TestKeyChangesWithInputsOnly(t *testing.T) {
	base := keyInputs{Schema: schemaVersion, Source: SourceModules, Versions: versions.Default(),
		KubernetesVersion: "v1.37.2", Toolchain: "go1.26.8", Busybox: "aa"}
	mod := func(f func(*keyInputs)) keyInputs { k := base; f(&k); return k }
	changed := map[string]keyInputs{
		"kubernetes":   mod(func(k *keyInputs) { k.Versions.Kubernetes = "v1.37.1"; k.KubernetesVersion = "v1.37.1" }),
		"etcd":         mod(func(k *keyInputs) { k.Versions.Etcd = "v3.6.15" }),
		"cni":          mod(func(k *keyInputs) { k.Versions.CNIPlugins = "v1.9.0" }),
		"coredns":      mod(func(k *keyInputs) { k.Versions.CoreDNS = "v1.14.5" }),
		"containerd":   mod(func(k *keyInputs) { k.Versions.Containerd = "v2.4.1" }),
		"runc":         mod(func(k *keyInputs) { k.Versions.Runc = "v1.5.1" }),
		"crictl":       mod(func(k *keyInputs) { k.Versions.Crictl = "v1.35.0" }),
		"flannel":      mod(func(k *keyInputs) { k.Versions.Flannel = "v0.28.9" }),
		"ignition":     mod(func(k *keyInputs) { k.Versions.Ignition = "v2.23.0" }),
		"pause":        mod(func(k *keyInputs) { k.Versions.Pause = "3.10" }),
		"source":       mod(func(k *keyInputs) { k.Source = SourceRelease }),
		"local tree":   mod(func(k *keyInputs) { k.Source = SourceLocal; k.KubernetesTree = "abc" }),
		"dirty tree":   mod(func(k *keyInputs) { k.Source = SourceLocal; k.KubernetesTree = "abc-dirty-01" }),
		"local verson": mod(func(k *keyInputs) { k.KubernetesVersion = "v1.38.0-alpha.0" }),
		"toolchain":    mod(func(k *keyInputs) { k.Toolchain = "go1.26.9" }),
		"busybox":      mod(func(k *keyInputs) { k.Busybox = "bb" }),
		"schema":       mod(func(k *keyInputs) { k.Schema++ }),
		"recipe":       mod(func(k *keyInputs) { k.Recipes = map[string]int{"cni": 9} }),
	}
	seen := map[string]string{base.key(): "base"}
	for name, in := range changed {
		k := in.key()
		if other, dup := seen[k]; dup {
			t.Errorf("%s: key %s equals the key of %s", name, k, other)
		}
		seen[k] = name
	}
	if base.key() != mod(func(*keyInputs) {}).key() {
		t.Error("same inputs gave different keys")
	}
	if !strings.HasPrefix(base.key(), "v1.37.2-modules-") {
		t.Errorf("key %q should start with the version and source", base.key())
	}
}

// Options that are not build inputs (where the cache is, where progress
// goes) must not change the key; versions must.
func TestKeyFromOptions(t *testing.T) {
	requireTool(t, "go")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		requireTool(t, "busybox")
	}
	ctx := context.Background()
	a, err := Key(ctx, Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Key(ctx, Options{CacheDir: t.TempDir(), Progress: os.Stderr, Versions: versions.Default(), Source: SourceModules})
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("defaults gave %s, explicit defaults %s", a, b)
	}
	v := versions.Default()
	v.Etcd = "v3.6.15"
	c, err := Key(ctx, Options{Versions: v})
	if err != nil {
		t.Fatal(err)
	}
	if c == a {
		t.Error("changing the etcd version kept the key")
	}
}

func TestLocalTreeState(t *testing.T) {
	requireTool(t, "git")
	ctx := context.Background()
	dir := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.invalid"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cmd/kubelet/main.go", "package main\n")
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "one")
	git("tag", "v1.99.0")

	clean, err := readTree(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if clean.version != "v1.99.0" || clean.dirty || clean.state != clean.commit {
		t.Fatalf("clean tree: %+v", clean)
	}
	again, _ := readTree(ctx, dir)
	if again.state != clean.state {
		t.Error("unchanged tree gave a different state")
	}

	write("cmd/kubelet/main.go", "package main\n// change\n")
	dirty1, err := readTree(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	write("cmd/kubelet/main.go", "package main\n// other change\n")
	dirty2, _ := readTree(ctx, dir)
	write("cmd/kubelet/new.go", "package main\n")
	dirty3, _ := readTree(ctx, dir)
	if !dirty1.dirty || dirty1.version != "v1.99.0-dirty" {
		t.Errorf("dirty tree: %+v", dirty1)
	}
	states := map[string]bool{clean.state: true}
	for i, s := range []string{dirty1.state, dirty2.state, dirty3.state} {
		if states[s] {
			t.Errorf("state %d (%s) repeats an earlier state", i+1, s)
		}
		states[s] = true
	}

	os.Remove(filepath.Join(dir, "cmd/kubelet/new.go"))
	git("commit", "-q", "-am", "two")
	next, _ := readTree(ctx, dir)
	if next.dirty || next.state == clean.state || !strings.HasPrefix(next.version, "v1.99.0-1+") {
		t.Errorf("second commit: %+v", next)
	}
}

func TestDescribeToVersion(t *testing.T) {
	for _, c := range []struct {
		in    string
		dirty bool
		want  string
	}{
		{"v1.37.2", false, "v1.37.2"},
		{"v1.37.2", true, "v1.37.2-dirty"},
		{"v1.37.2-12-gabcdef0123456", false, "v1.37.2-12+abcdef0123456"},
		{"v1.38.0-alpha.1-12-gabcdef0123456", false, "v1.38.0-alpha.1.12+abcdef0123456"},
	} {
		if got := describeToVersion(c.in, c.dirty); got != c.want {
			t.Errorf("describeToVersion(%q, %v) = %q, want %q", c.in, c.dirty, got, c.want)
		}
	}
}

func TestKubeLdflags(t *testing.T) {
	got := kubeLdflags("v1.37.2", false)
	for _, want := range []string{
		"-X k8s.io/component-base/version.gitVersion=v1.37.2",
		"-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2",
		"-X k8s.io/component-base/version.gitMajor=1",
		"-X k8s.io/component-base/version.gitMinor=37 ",
		"-X k8s.io/component-base/version.gitTreeState=clean",
	} {
		if !strings.Contains(got+" ", want) {
			t.Errorf("ldflags lack %q: %s", want, got)
		}
	}
	if d := kubeLdflags("v1.38.0-alpha.1.12+abc-dirty", true); !strings.Contains(d, "gitMinor=38+") || !strings.Contains(d, "gitTreeState=dirty") {
		t.Errorf("dev ldflags: %s", d)
	}
}

func TestStagingModules(t *testing.T) {
	p := filepath.Join(t.TempDir(), "go.mod")
	os.WriteFile(p, []byte(`module k8s.io/kubernetes

require (
	github.com/foo/bar v1.2.3
	k8s.io/api v0.0.0
	k8s.io/klog/v2 v2.130.1
	k8s.io/sample-apiserver v0.0.0
)

require k8s.io/client-go v0.0.0

replace k8s.io/api => ./staging/src/k8s.io/api
`), 0o644)
	got, err := stagingModules(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "k8s.io/api,k8s.io/client-go" {
		t.Errorf("staging modules = %v", got)
	}
	if v, _ := stagingVersion("v1.37.2"); v != "v0.37.2" {
		t.Errorf("staging version = %s", v)
	}
	if _, err := stagingVersion("v2.0.0"); err == nil {
		t.Error("v2.0.0 accepted as a Kubernetes version")
	}
}

func TestBinName(t *testing.T) {
	for pkg, want := range map[string]string{
		"go.etcd.io/etcd/server/v3":             "server",
		"k8s.io/kubernetes/cmd/kubelet":         "kubelet",
		"github.com/opencontainers/runc":        "runc",
		"github.com/containerd/containerd/v2":   "containerd",
		"./cmd/kube-apiserver":                  "kube-apiserver",
		"example.com/vendor/v2x":                "v2x",
		"github.com/containerd/containerd/v2/x": "x",
	} {
		if got := binName(pkg); got != want {
			t.Errorf("binName(%q) = %q, want %q", pkg, got, want)
		}
	}
}

// TestLocalTreeBuild builds a miniature Kubernetes-shaped checkout (its own
// component-base staging module, the six cmd/ packages) through the local
// source and checks the version from git describe is stamped in.
func TestLocalTreeBuild(t *testing.T) {
	requireTool(t, "go")
	requireTool(t, "git")
	ctx := context.Background()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module k8s.io/kubernetes\n\ngo 1.26\n\nrequire k8s.io/component-base v0.0.0\n\nreplace k8s.io/component-base => ./staging/src/k8s.io/component-base\n",
		"staging/src/k8s.io/component-base/go.mod":             "module k8s.io/component-base\n\ngo 1.26\n",
		"staging/src/k8s.io/component-base/version/version.go": "package version\n\nvar gitVersion = \"v0.0.0-unset\"\nvar gitTreeState = \"\"\n\nfunc Get() string { return gitVersion + \" \" + gitTreeState }\n",
	}
	for _, c := range kubernetesCommands {
		files["cmd/"+c+"/main.go"] = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"k8s.io/component-base/version\"\n)\n\nfunc main() { fmt.Println(\"" + c + " Kubernetes \" + version.Get()) }\n"
	}
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"commit", "-q", "-m", "mini"}, {"tag", "v1.99.1"}} {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.invalid"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	tr, err := readTree(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	gb := &goBuilder{goCmd: "go", work: t.TempDir()}
	src := &localSource{tree: tr, gb: gb, modules: &moduleSource{gb: gb}}
	p := partsFor(versions.Default(), tr.version)[0]
	out := t.TempDir()
	if err := src.fetch(ctx, p, out); err != nil {
		t.Fatal(err)
	}
	for _, c := range kubernetesCommands {
		got, err := exec.Command(filepath.Join(out, BinDir, c)).CombinedOutput()
		if want := c + " Kubernetes v1.99.1 clean"; err != nil || strings.TrimSpace(string(got)) != want {
			t.Errorf("%s printed %q (%v), want %q", c, got, err, want)
		}
	}
	if id := src.id(p); id != "local:"+tr.commit {
		t.Errorf("kubernetes part id %q", id)
	}
	if id := src.id(part{name: "etcd"}); id != "modules" {
		t.Errorf("etcd from a local source should share the modules cache, id %q", id)
	}
}
