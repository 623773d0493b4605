package lab

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/plan"
)

// TestChangeTar unpacks a change with GNU tar, as the node does, and
// checks paths, contents and modes.
func TestChangeTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("tar is required")
	}
	ch := nodeconfig.Change{
		Files: []nodeconfig.File{
			{Path: "/etc/kubernetes/pki/apiserver.key", Mode: 0o600, Contents: []byte("secret"), Secret: true},
			{Path: "/etc/kubernetes/pki/apiserver.crt", Mode: 0o644, Contents: []byte("public")},
		},
		Units:   []nodeconfig.Unit{{Name: "kubelet.service", DropIn: "10-x.conf", Contents: "[Service]\n"}},
		Restart: []string{"kubelet.service"},
	}
	data, err := changeTar(ch)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{"etc/kubernetes/pki", "etc/systemd/system/kubelet.service.d"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "etc/kubernetes/pki/apiserver.crt"), []byte("old"), 0o644)
	cmd := exec.Command("tar", "-x", "-p", "--no-overwrite-dir", "-C", dir, "-f", "-")
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	for path, want := range map[string]struct {
		data string
		mode os.FileMode
	}{
		"etc/kubernetes/pki/apiserver.key":               {"secret", 0o600},
		"etc/kubernetes/pki/apiserver.crt":               {"public", 0o644},
		"etc/systemd/system/kubelet.service.d/10-x.conf": {"[Service]\n", 0o644},
	} {
		got, err := os.ReadFile(filepath.Join(dir, path))
		st, _ := os.Stat(filepath.Join(dir, path))
		if err != nil || string(got) != want.data || st.Mode().Perm() != want.mode {
			t.Errorf("%s: %q %v (err %v), want %q %v", path, got, st.Mode().Perm(), err, want.data, want.mode)
		}
	}
	script := deliverScript(ch)
	for _, want := range []string{"daemon-reload", "systemctl restart --no-block kubelet.service", "restarted-at", "echo delivered"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if s := deliverScript(nodeconfig.Change{Files: ch.Files}); strings.Contains(s, "restart --no-block") || strings.Contains(s, "daemon-reload") {
		t.Errorf("files only, yet:\n%s", s)
	}
}

func TestDeliveryOrder(t *testing.T) {
	c := plan.Cluster{Nodes: []plan.Node{
		{Name: "w1", Roles: []string{"worker"}},
		{Name: "cp1", Roles: []string{"control-plane"}},
		{Name: "e1", Roles: []string{"etcd"}},
		{Name: "w2", Roles: []string{"worker"}},
		{Name: "cp2", Roles: []string{"control-plane", "etcd"}},
	}}
	var got []string
	for _, n := range deliveryOrder(c) {
		got = append(got, n.Name)
	}
	if strings.Join(got, " ") != "e1 cp2 cp1 w1 w2" {
		t.Errorf("order %v", got)
	}
}

// TestNodeFilesScript runs the script a node runs, here, on files made to
// match a configuration or not, and diffs the answer.
func TestNodeFilesScript(t *testing.T) {
	dir := t.TempDir()
	same := filepath.Join(dir, "same.crt")
	changed := filepath.Join(dir, "changed.key")
	mode := filepath.Join(dir, "mode.conf")
	missing := filepath.Join(dir, "missing.kubeconfig")
	os.WriteFile(same, []byte("same"), 0o644)
	os.WriteFile(changed, []byte("old"), 0o600)
	os.WriteFile(mode, []byte("m"), 0o644)
	want := nodeconfig.Node{Files: []nodeconfig.File{
		{Path: same, Mode: 0o644, Contents: []byte("same")},
		{Path: changed, Mode: 0o600, Contents: []byte("new")},
		{Path: mode, Mode: 0o600, Contents: []byte("m")},
		{Path: missing, Mode: 0o600, Contents: []byte("k")},
	}}
	script, err := nodeFilesScript(want.Paths())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", script).Output()
	if err != nil {
		t.Fatalf("script: %v\n%s", err, script)
	}
	have, err := parseNodeFiles(string(out))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range nodeconfig.DiffState(have, want).Files {
		got = append(got, filepath.Base(f.Path))
	}
	if strings.Join(got, " ") != "changed.key mode.conf missing.kubeconfig" {
		t.Errorf("files to deliver: %v\n%s", got, out)
	}
	if _, err := nodeFilesScript([]string{"/etc/x'; rm -rf /"}); err == nil {
		t.Error("a path with a quote was accepted")
	}
	if _, err := parseNodeFiles("abc 644 root root /x\n"); err == nil {
		t.Error("a malformed listing was accepted")
	}
	if _, err := parseNodeFiles(strings.Repeat("a", 64) + " 644 root root /x\n"); err == nil {
		t.Error("a listing without its end was accepted")
	}
}
