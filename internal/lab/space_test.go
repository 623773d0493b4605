package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/driver"
)

// TestSpaceRefusedBeforeTheHostIsTouched puts a lab on a 64 MiB tmpfs: up's
// space phase refuses it, naming the directory, what is free, what the
// new nodes need and which they are. The phase comes before every phase
// that touches the host or makes disks. Once the nodes exist (a later up)
// nothing more is asked.
func TestSpaceRefusedBeforeTheHostIsTouched(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (mounts a small tmpfs)")
		}
		t.Skip("needs root (mounts a small tmpfs)")
	}
	small := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "kltest-space", small).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", small).Run() })

	env, d := snapshotEnv(t)
	dir := filepath.Join(small, "lab")
	if out, err := exec.Command("cp", "-a", env.Layout.Dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	env.Layout.Dir = dir
	d.state = driver.StateAbsent

	phases := env.UpPhases(context.Background())
	order := map[string]int{}
	for i, p := range phases {
		order[p.Name] = i
	}
	for _, later := range []string{"template", "network", "disks", "boot"} {
		if order["preflight"] >= order[later] {
			t.Errorf("the preflight phase runs after %s", later)
		}
	}

	err := runNamed(t, phases, "preflight")
	if err == nil {
		t.Fatal("up accepted a lab directory with 64 MiB free")
	}
	var nodes []string
	for _, n := range env.Plan.Clusters[0].Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, want := range []string{
		dir + " has ",
		" MiB free, but up needs ",
		fmt.Sprintf("%d MiB for each of %d new nodes (%s)", nodeRoomMiB, len(nodes), strings.Join(nodes, ", ")),
		"move the lab to a larger file system",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	d.state = driver.StateStopped
	if err := runNamed(t, phases, "preflight"); err != nil {
		t.Errorf("nodes that exist need no new room: %v", err)
	}
}
