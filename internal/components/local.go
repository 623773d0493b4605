package components

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// tree is a local Kubernetes checkout.
type tree struct {
	dir     string
	version string // from git describe, upstream's format
	commit  string
	dirty   bool
	state   string // commit plus a hash of uncommitted changes: the cache input
}

// readTree reads what identifies a Kubernetes checkout's content.
func readTree(ctx context.Context, dir string) (tree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return tree{}, err
	}
	if _, err := os.Stat(filepath.Join(abs, "cmd", "kubelet")); err != nil {
		return tree{}, fmt.Errorf("%s does not look like a Kubernetes checkout (no cmd/kubelet): %w", abs, err)
	}
	t := tree{dir: abs}
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", abs}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("git %s in %s: %w: %s", strings.Join(args, " "), abs, err, strings.TrimSpace(errb.String()))
		}
		return out.String(), nil
	}
	head, err := git("rev-parse", "HEAD")
	if err != nil {
		return tree{}, fmt.Errorf("the Kubernetes tree must be a git checkout to key the cache: %w", err)
	}
	t.commit = strings.TrimSpace(head)
	status, err := git("status", "--porcelain", "--untracked-files=all")
	if err != nil {
		return tree{}, err
	}
	t.state = t.commit
	if strings.TrimSpace(status) != "" {
		t.dirty = true
		h := sha256.New()
		diff, err := git("diff", "HEAD", "--binary")
		if err != nil {
			return tree{}, err
		}
		h.Write([]byte(diff))
		untracked, err := git("ls-files", "--others", "--exclude-standard", "-z")
		if err != nil {
			return tree{}, err
		}
		for _, f := range strings.Split(untracked, "\x00") {
			if f == "" {
				continue
			}
			b, err := os.ReadFile(filepath.Join(abs, f))
			if err != nil {
				return tree{}, fmt.Errorf("hash untracked %s: %w", f, err)
			}
			fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
			h.Write(b)
		}
		t.state += "-dirty-" + hex.EncodeToString(h.Sum(nil))[:16]
	}
	if d, err := git("describe", "--tags", "--match", "v[0-9]*", "--abbrev=14", "HEAD"); err == nil {
		t.version = describeToVersion(strings.TrimSpace(d), t.dirty)
	}
	return t, nil
}

var describeRE = regexp.MustCompile(`^(.*)-([0-9]+)-g([0-9a-f]+)$`)

// describeToVersion turns git describe output into the semver form
// upstream's hack/lib/version.sh produces: v1.37.0-alpha.1-12-gabc ->
// v1.37.0-alpha.1.12+abc.
func describeToVersion(d string, dirty bool) string {
	if m := describeRE.FindStringSubmatch(d); m != nil {
		sep := "-"
		if strings.Contains(m[1], "-") {
			sep = "."
		}
		d = m[1] + sep + m[2] + "+" + m[3]
	}
	if dirty {
		d += "-dirty"
	}
	return d
}

// localSource builds the Kubernetes part from a local tree with the same
// flags as the module build; every other part comes from modules.
type localSource struct {
	tree    tree
	gb      *goBuilder
	modules *moduleSource
}

func (s *localSource) id(p part) string {
	if p.name == "kubernetes" {
		return "local:" + s.tree.state
	}
	return s.modules.id(p)
}

func (s *localSource) fetch(ctx context.Context, p part, dir string) error {
	if p.name != "kubernetes" {
		return s.modules.fetch(ctx, p, dir)
	}
	var ts []target
	for _, c := range kubernetesCommands {
		ts = append(ts, target{"./cmd/" + c, filepath.Join(BinDir, c)})
	}
	return s.buildTree(ctx, dir, ts)
}

// buildTree builds in the checkout itself with its own go.mod/go.work and
// vendor settings (so no -mod=mod here).
func (s *localSource) buildTree(ctx context.Context, dir string, ts []target) error {
	tmp, err := os.MkdirTemp(dir, ".gobuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-trimpath", "-tags", upstreamTags, "-ldflags", kubeLdflags(s.tree.version, s.tree.dirty), "-o", tmp + "/"}
	for _, t := range ts {
		args = append(args, t.pkg)
	}
	if _, err := s.gb.output(ctx, s.tree.dir, goEnv(false, "GOFLAGS="), args...); err != nil {
		return err
	}
	for _, t := range ts {
		to := filepath.Join(dir, t.out)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(tmp, binName(t.pkg)), to); err != nil {
			return fmt.Errorf("collect %s: %w", t.out, err)
		}
	}
	return nil
}
