// Package testenv holds what the end-to-end test packages share: where the
// repository, the component cache and the artifacts are, and the kubelab
// binary under test.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RepoRoot is the directory holding go.mod, found from the test's working
// directory upwards.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// CacheDir is kubelab's cache: $KUBELAB_CACHE, else ~/.cache/kubelab.
func CacheDir() string {
	if c := os.Getenv("KUBELAB_CACHE"); c != "" {
		return c
	}
	d, _ := os.UserCacheDir()
	return filepath.Join(d, "kubelab")
}

// KubectlPath is the kubectl of the cached components.
func KubectlPath(t testing.TB) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(CacheDir(), "components", "*", "bin", "kubectl"))
	if len(matches) == 0 {
		t.Fatalf("no kubectl under %s/components (run kubelab components build, as hack/test.sh does)", CacheDir())
	}
	return matches[0]
}

// ArtifactsDir is where tests leave logs and consoles for CI to show:
// $KUBELAB_E2E_ARTIFACTS, else /tmp/kubelab-e2e.
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBELAB_E2E_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "kubelab-e2e")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// BuildKubelab builds the kubelab binary of this tree into the test's
// temporary directory.
func BuildKubelab(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubelab")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/kubelab")
	cmd.Dir = RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kubelab: %v\n%s", err, out)
	}
	return bin
}
