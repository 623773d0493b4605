package overlay

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/render/rendertest"
	"github.com/kubelab/kubelab/internal/versions"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required: %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// listing describes a tar one entry a line: path, mode, owner, size, sha256.
func listing(t *testing.T, data []byte) string {
	t.Helper()
	var b strings.Builder
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.IsZero() && h.ModTime.Unix() != 0 {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: uid/gid %d/%d", h.Name, h.Uid, h.Gid)
		}
		fmt.Fprintf(&b, "%s %04o %s:%s %d %x\n", h.Name, h.Mode, h.Uname, h.Gname, h.Size, sha256.Sum256(body))
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	for name, n := range rendertest.Nodes(rendertest.PlaceholderHostKeys()) {
		t.Run(name, func(t *testing.T) {
			data, err := Render(n)
			if err != nil {
				t.Fatal(err)
			}
			if len(data)%512 != 0 {
				t.Errorf("size %d is not a multiple of 512", len(data))
			}
			again, err := Render(n)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, again) {
				t.Error("two renders of the same node differ")
			}
			got := listing(t, data)
			golden := filepath.Join("testdata", name+".list")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs (run with -update if intended):\n%s", golden, got)
			}
		})
	}
}

// TestExtract unpacks the overlay with GNU tar, the way the image's
// apply-overlay does, and checks every file, mode and the metadata.
func TestExtract(t *testing.T) {
	gnutar := requireTool(t, "tar")
	keys, err := rendertest.GenerateHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	n := rendertest.ControlPlane(keys)
	dir := t.TempDir()
	p, err := Write(dir, n)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("overlay file: %v, %v", st, err)
	}

	out, err := exec.Command(gnutar, "-tvf", p).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tvf: %v\n%s", err, out)
	}
	for _, want := range []string{"etc/ssh/ssh_host_ed25519_key", "root/.ssh/authorized_keys", "etc/systemd/system/kube-apiserver.service.d/10-limits.conf", "etc/kubelab/overlay.json"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tar -tvf lacks %s:\n%s", want, out)
		}
	}

	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// -p as apply-overlay gets by running as root; --no-same-owner because
	// the test host lacks the node's users.
	if out, err := exec.Command(gnutar, "-x", "-p", "--no-same-owner", "-f", p, "-C", root).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}

	want := map[string]nodeconfig.File{}
	for _, f := range n.Files {
		want[f.Path] = f
	}
	for _, u := range n.Units {
		want[u.UnitFile()] = nodeconfig.File{Path: u.UnitFile(), Mode: 0o644, Contents: []byte(u.Contents)}
	}
	for _, f := range append(n.NetworkdFiles(), n.SystemFiles()...) {
		want[f.Path] = f
	}
	for _, f := range n.SSHHostKeys {
		want[f.Path] = f
	}
	want["/root/.ssh/authorized_keys"] = nodeconfig.File{Mode: 0o600,
		Contents: []byte(strings.Join(n.Users[0].SSHAuthorizedKeys, "\n") + "\n")}
	for p, w := range want {
		got := filepath.Join(root, p)
		st, err := os.Stat(got)
		if err != nil {
			t.Errorf("%s not extracted: %v", p, err)
			continue
		}
		if uint32(st.Mode().Perm()) != w.Mode&0o777 {
			t.Errorf("%s: mode %o, want %o", p, st.Mode().Perm(), w.Mode)
		}
		if w.Secret && st.Mode().Perm() != 0o600 {
			t.Errorf("secret %s: mode %o", p, st.Mode().Perm())
		}
		data, _ := os.ReadFile(got)
		if !bytes.Equal(data, w.Contents) {
			t.Errorf("%s: contents %q, want %q", p, data, w.Contents)
		}
	}
	for p, mode := range map[string]fs.FileMode{"root": 0o700, "root/.ssh": 0o700, "etc": 0o755, "etc/systemd/system": 0o755} {
		if st, err := os.Stat(filepath.Join(root, p)); err != nil || st.Mode().Perm() != mode {
			t.Errorf("dir %s: %v %v, want %o", p, st.Mode(), err, mode)
		}
	}
	key, err := os.ReadFile(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ssh.ParsePrivateKey(key); err != nil {
		t.Errorf("extracted host key does not parse: %v", err)
	}

	// The contract with the image's apply-overlay.
	raw, err := os.ReadFile(filepath.Join(root, versions.NodeOverlayMeta))
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	var keysSeen []string
	for k := range meta {
		keysSeen = append(keysSeen, k)
	}
	slices.Sort(keysSeen)
	if !slices.Equal(keysSeen, []string{"enable", "hostname", "mask"}) {
		t.Errorf("overlay.json keys %v", keysSeen)
	}
	var m Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m.Hostname != n.Hostname || !slices.Equal(m.Enable, n.Enable) || !slices.Equal(m.Mask, n.Mask) {
		t.Errorf("overlay.json %+v", m)
	}
}

// TestMetaEmptyLists: a node without masks still writes "mask": [].
func TestMetaEmptyLists(t *testing.T) {
	data, err := Render(rendertest.Worker(nil))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no %s in the overlay: %v", versions.NodeOverlayMeta, err)
		}
		if "/"+h.Name != versions.NodeOverlayMeta {
			continue
		}
		body, _ := io.ReadAll(tr)
		if !bytes.Contains(body, []byte(`"mask": []`)) {
			t.Errorf("overlay.json:\n%s", body)
		}
		return
	}
}

func TestBadNode(t *testing.T) {
	base := rendertest.Worker(rendertest.PlaceholderHostKeys())
	for name, mod := range map[string]func(n *nodeconfig.Node){
		"relative path":     func(n *nodeconfig.Node) { n.Files[0].Path = "etc/x" },
		"unclean path":      func(n *nodeconfig.Node) { n.Files[0].Path = "/etc/../x" },
		"duplicate file":    func(n *nodeconfig.Node) { n.Files = append(n.Files, n.Files[0]) },
		"file is directory": func(n *nodeconfig.Node) { n.Files[0].Path = "/etc/containerd" },
		"enable and mask":   func(n *nodeconfig.Node) { n.Mask = []string{"kubelet.service"} },
		"non-root user":     func(n *nodeconfig.Node) { *n = rendertest.WithCoreUser(*n) },
	} {
		t.Run(name, func(t *testing.T) {
			n := base
			n.Files = slices.Clone(base.Files)
			mod(&n)
			if _, err := Render(n); err == nil {
				t.Fatal("no error")
			} else {
				t.Log(err)
			}
		})
	}
}

// TestImageContract feeds the rendered overlay.json to the reader in the
// node image's apply-overlay script (plain shell), the other side of the
// contract.
func TestImageContract(t *testing.T) {
	sh := requireTool(t, "sh")
	script, err := os.ReadFile("../../image/assets/apply-overlay")
	if err != nil {
		t.Fatalf("the image's apply-overlay script: %v", err)
	}
	s := string(script)
	begin := strings.Index(s, "# overlay.json is written")
	end := strings.Index(s, `if [ -n "$hostname" ]; then`)
	if begin < 0 || end < begin {
		t.Fatal("apply-overlay changed shape: the markers around its overlay.json reader are gone; the contract changed")
	}
	parser := s[begin:end]

	n := rendertest.ControlPlane(nil)
	data, err := Render(n)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	var meta []byte
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no %s: %v", versions.NodeOverlayMeta, err)
		}
		if "/"+h.Name == versions.NodeOverlayMeta {
			meta, _ = io.ReadAll(tr)
			break
		}
	}
	p := filepath.Join(t.TempDir(), "overlay.json")
	if err := os.WriteFile(p, meta, 0o644); err != nil {
		t.Fatal(err)
	}
	prog := "set -eu\nmeta=" + p + "\n" + parser + "\necho \"$enable|$mask|$hostname\"\n"
	out, err := exec.Command(sh, "-c", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("apply-overlay's reader: %v\n%s", err, out)
	}
	want := "containerd.service etcd.service kube-apiserver.service |systemd-timesyncd.service |k1-cp1\n"
	if string(out) != want {
		t.Errorf("apply-overlay's reader printed:\n%s\nwant:\n%s", out, want)
	}
}
