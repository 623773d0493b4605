package components

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// goBuilder runs the go command on scratch modules kept under work (in the
// cache, never in the repo), one module per upstream project so their
// dependency versions never mix.
type goBuilder struct {
	goCmd string
	work  string
	log   io.Writer
}

// upstreamTags are the build tags Kubernetes' own release build uses.
const upstreamTags = "selinux,notest,grpcnotrace"

// goEnv is the environment of every go command: static linux/amd64 output,
// modules resolved through the proxy, the installed toolchain only.
func goEnv(cgo bool, extra ...string) []string {
	c := "0"
	if cgo {
		c = "1"
	}
	env := os.Environ()
	env = append(env, "CGO_ENABLED="+c, "GOOS=linux", "GOARCH=amd64", "GOTOOLCHAIN=local")
	return append(env, extra...)
}

func (g *goBuilder) version(ctx context.Context) (string, error) {
	out, err := g.output(ctx, "", goEnv(false), "env", "GOVERSION")
	if err != nil {
		return "", fmt.Errorf("find the Go toolchain (%s): %w", g.goCmd, err)
	}
	return strings.TrimSpace(out), nil
}

// output runs go with args in dir and returns stdout; on failure the error
// carries the tail of stderr, which is where go explains itself.
func (g *goBuilder) output(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, g.goCmd, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), dir, err, tail(stderr.String(), 30))
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// moduleDir returns the source directory of module@version in the module
// cache, downloading it through the proxy if needed.
func (g *goBuilder) moduleDir(ctx context.Context, mod, version string) (dir, gomod string, err error) {
	out, err := g.output(ctx, "", goEnv(false, "GOFLAGS=-mod=mod"), "mod", "download", "-json", mod+"@"+version)
	if err != nil {
		return "", "", err
	}
	var info struct{ Dir, GoMod, Error string }
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", "", fmt.Errorf("parse go mod download output for %s: %w", mod, err)
	}
	if info.Error != "" {
		return "", "", fmt.Errorf("download %s@%s: %s", mod, version, info.Error)
	}
	return info.Dir, info.GoMod, nil
}

// scratch describes one scratch module.
type scratch struct {
	name     string            // directory name under work
	requires map[string]string // module -> version
	replaces map[string]string // module -> version
	imports  []string          // packages kept in the module graph by tools.go
	files    map[string]string // extra files (a generated main.go)
}

// prepare writes the scratch module and runs go mod tidy when its inputs
// changed since the last successful tidy.
func (g *goBuilder) prepare(ctx context.Context, s scratch) (string, error) {
	dir := filepath.Join(g.work, s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var mod strings.Builder
	fmt.Fprintf(&mod, "module kubelab.local/build/%s\n\ngo 1.26\n\n", strings.ReplaceAll(s.name, ".", "-"))
	for _, m := range sortedKeys(s.requires) {
		fmt.Fprintf(&mod, "require %s %s\n", m, s.requires[m])
	}
	for _, m := range sortedKeys(s.replaces) {
		fmt.Fprintf(&mod, "replace %s => %s %s\n", m, m, s.replaces[m])
	}
	files := map[string]string{}
	for k, v := range s.files {
		files[k] = v
	}
	if len(s.imports) > 0 {
		var t strings.Builder
		t.WriteString("//go:build tools\n\n// Package tools keeps the commands kubelab builds in this module's graph.\npackage tools\n\nimport (\n")
		for _, p := range s.imports {
			fmt.Fprintf(&t, "\t_ %q\n", p)
		}
		t.WriteString(")\n")
		files["tools.go"] = t.String()
	}
	stamp := hashStrings(append([]string{mod.String()}, flatten(files)...)...)
	stampFile := filepath.Join(dir, ".kubelab-tidy")
	if b, err := os.ReadFile(stampFile); err == nil && string(b) == stamp {
		return dir, nil
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		return "", err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	if _, err := g.output(ctx, dir, goEnv(false, "GOFLAGS=-mod=mod"), "mod", "tidy"); err != nil {
		return "", err
	}
	return dir, os.WriteFile(stampFile, []byte(stamp), 0o644)
}

// target is one binary to build: package path and output file relative to
// the part directory.
type target struct{ pkg, out string }

// build compiles targets from the scratch module in modDir into outDir, with
// one go invocation so links run in parallel.
func (g *goBuilder) build(ctx context.Context, modDir, outDir string, cgo bool, tags, ldflags string, targets []target) error {
	tmp, err := os.MkdirTemp(outDir, ".gobuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-trimpath", "-tags", tags, "-ldflags", ldflags}
	var pkgs []string
	for _, t := range targets {
		pkgs = append(pkgs, t.pkg)
	}
	if len(targets) == 1 {
		args = append(args, "-o", filepath.Join(tmp, "out"))
	} else {
		args = append(args, "-o", tmp+"/")
	}
	args = append(args, pkgs...)
	if _, err := g.output(ctx, modDir, goEnv(cgo, "GOFLAGS=-mod=mod"), args...); err != nil {
		return err
	}
	for _, t := range targets {
		from := filepath.Join(tmp, "out")
		if len(targets) > 1 {
			from = filepath.Join(tmp, binName(t.pkg))
		}
		to := filepath.Join(outDir, t.out)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := os.Rename(from, to); err != nil {
			return fmt.Errorf("collect %s: %w", t.out, err)
		}
	}
	return nil
}

var majorSuffix = regexp.MustCompile(`^v[0-9]+$`)

// binName is the file name go build -o dir/ gives a main package: the last
// path element, skipping a /vN major version suffix.
func binName(pkg string) string {
	b := path.Base(pkg)
	if majorSuffix.MatchString(b) {
		b = path.Base(path.Dir(pkg))
	}
	return b
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func flatten(m map[string]string) []string {
	var out []string
	for _, k := range sortedKeys(m) {
		out = append(out, k, m[k])
	}
	return out
}

// kubeLdflags stamps the version into both places Kubernetes reads it from,
// as upstream's hack/lib/version.sh does.
func kubeLdflags(version string, dirty bool) string {
	state := "clean"
	if dirty {
		state = "dirty"
	}
	major, minor := "", ""
	if v := strings.TrimPrefix(version, "v"); v != version {
		parts := strings.SplitN(v, ".", 3)
		if len(parts) >= 2 {
			major = parts[0]
			minor = parts[1]
			if len(parts) == 3 && strings.ContainsAny(parts[2], "-+") {
				minor += "+"
			}
		}
	}
	flags := []string{"-s", "-w"}
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", p+".gitVersion="+version,
			"-X", p+".gitMajor="+major,
			"-X", p+".gitMinor="+minor,
			"-X", p+".gitTreeState="+state,
			// Fixed date keeps the build reproducible.
			"-X", p+".buildDate=1970-01-01T00:00:00Z")
	}
	return strings.Join(flags, " ")
}
