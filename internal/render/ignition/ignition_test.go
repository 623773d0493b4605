package ignition

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"
	"golang.org/x/crypto/ssh"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/render/rendertest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func goldenNodes() map[string]nodeconfig.Node {
	keys := rendertest.PlaceholderHostKeys()
	nodes := rendertest.Nodes(keys)
	nodes["w1-core"] = rendertest.WithCoreUser(nodes["w1"])
	return nodes
}

// parseStrict runs the official parser and fails on any report entry,
// warnings included.
func parseStrict(t *testing.T, raw []byte) types.Config {
	t.Helper()
	cfg, rpt, err := v34.Parse(raw)
	if err != nil {
		t.Fatalf("ignition parse: %v\n%s", err, rpt)
	}
	if len(rpt.Entries) > 0 {
		t.Fatalf("ignition parse reported:\n%s", rpt)
	}
	return cfg
}

func TestGolden(t *testing.T) {
	for name, n := range goldenNodes() {
		t.Run(name, func(t *testing.T) {
			out, err := Render(n, nil)
			if err != nil {
				t.Fatal(err)
			}
			parseStrict(t, out)
			again, err := Render(n, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, again) {
				t.Fatal("two renders of the same node differ")
			}
			golden := filepath.Join("testdata", name+".ignition.json")
			if *update {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("%s differs from the rendered config (run with -update if the change is intended):\n%s", golden, out)
			}
		})
	}
}

func fileByPath(cfg types.Config, p string) *types.File {
	for i := range cfg.Storage.Files {
		if cfg.Storage.Files[i].Path == p {
			return &cfg.Storage.Files[i]
		}
	}
	return nil
}

func unitByName(cfg types.Config, name string) *types.Unit {
	for i := range cfg.Systemd.Units {
		if cfg.Systemd.Units[i].Name == name {
			return &cfg.Systemd.Units[i]
		}
	}
	return nil
}

func contents(t *testing.T, f *types.File) []byte {
	t.Helper()
	u, err := dataurl.DecodeString(*f.Contents.Source)
	if err != nil {
		t.Fatalf("%s: decode data URL: %v", f.Path, err)
	}
	return u.Data
}

// TestContents checks that every part of the description arrives, with a
// real host key generated now.
func TestContents(t *testing.T) {
	keys, err := rendertest.GenerateHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	n := rendertest.WithCoreUser(rendertest.ControlPlane(keys))
	out, err := Render(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseStrict(t, out)

	// Every file, byte for byte, with its mode and owner.
	var want []nodeconfig.File
	want = append(want, n.Files...)
	want = append(want, n.NetworkdFiles()...)
	want = append(want, n.SystemFiles()...)
	want = append(want, n.SSHHostKeys...)
	for _, w := range want {
		f := fileByPath(cfg, w.Path)
		if f == nil {
			t.Errorf("%s missing", w.Path)
			continue
		}
		if got := contents(t, f); !bytes.Equal(got, w.Contents) {
			t.Errorf("%s: contents %q, want %q", w.Path, got, w.Contents)
		}
		if f.Mode == nil || uint32(*f.Mode) != w.Mode {
			t.Errorf("%s: mode %v, want %o", w.Path, f.Mode, w.Mode)
		}
		if w.Owner != "" && (f.User.Name == nil || *f.User.Name != w.Owner) {
			t.Errorf("%s: owner %v, want %s", w.Path, f.User.Name, w.Owner)
		}
		if f.Overwrite == nil || !*f.Overwrite {
			t.Errorf("%s: overwrite not set; a refresh re-runs Ignition over existing files", w.Path)
		}
	}
	key := fileByPath(cfg, "/etc/ssh/ssh_host_ed25519_key")
	if *key.Mode != 0o600 {
		t.Errorf("host key mode %o, want 600", *key.Mode)
	}
	if _, err := ssh.ParsePrivateKey(contents(t, key)); err != nil {
		t.Errorf("host key does not parse after the round trip: %v", err)
	}
	sudo := fileByPath(cfg, SudoersPath)
	if sudo == nil || !strings.Contains(string(contents(t, sudo)), "core ALL=(ALL) NOPASSWD:ALL") {
		t.Errorf("sudoers file for core missing or wrong")
	}
	if fileByPath(cfg, "/etc/systemd/network/10-kubelab-eth0.network") == nil {
		t.Errorf("networkd file missing; files: %v", cfg.Storage.Files)
	}

	// Users: root and core with their keys.
	if len(cfg.Passwd.Users) != 2 || cfg.Passwd.Users[0].Name != "root" || cfg.Passwd.Users[1].Name != "core" {
		t.Fatalf("users %+v", cfg.Passwd.Users)
	}
	if got := len(cfg.Passwd.Users[0].SSHAuthorizedKeys); got != len(n.Users[0].SSHAuthorizedKeys) {
		t.Errorf("root has %d keys, want %d", got, len(n.Users[0].SSHAuthorizedKeys))
	}

	// Units, drop-ins, enable and mask.
	api := unitByName(cfg, "kube-apiserver.service")
	if api == nil || api.Contents == nil || len(api.Dropins) != 1 || api.Dropins[0].Name != "10-limits.conf" {
		t.Errorf("kube-apiserver.service: %+v", api)
	}
	ctr := unitByName(cfg, "containerd.service")
	if ctr == nil || ctr.Contents != nil || len(ctr.Dropins) != 1 || ctr.Enabled == nil || !*ctr.Enabled {
		t.Errorf("containerd.service should be a drop-in only, enabled: %+v", ctr)
	}
	for _, name := range n.Enable {
		if u := unitByName(cfg, name); u == nil || u.Enabled == nil || !*u.Enabled {
			t.Errorf("%s not enabled", name)
		}
	}
	for _, name := range n.Mask {
		if u := unitByName(cfg, name); u == nil || u.Mask == nil || !*u.Mask {
			t.Errorf("%s not masked", name)
		}
	}
}

const flatcarSnippet = `variant: flatcar
version: 1.0.0
storage:
  files:
    - path: /etc/motd.d/lab.conf
      mode: 0644
      contents:
        inline: Welcome to the lab
    - path: /etc/hostname
      overwrite: true
      contents:
        inline: from-the-snippet
systemd:
  units:
    - name: hello.service
      enabled: true
      contents: |
        [Unit]
        Description=hello
        [Service]
        Type=oneshot
        ExecStart=/usr/bin/echo hello
        [Install]
        WantedBy=multi-user.target
`

const fcosSnippet = `variant: fcos
version: 1.5.0
systemd:
  units:
    - name: kubelet.service
      dropins:
        - name: 20-snippet.conf
          contents: |
            [Service]
            Environment=FROM_SNIPPET=1
`

func TestButaneMerge(t *testing.T) {
	n := rendertest.Worker(rendertest.PlaceholderHostKeys())
	out, err := Render(n, []Snippet{
		{Name: "lab.ct", Data: []byte(flatcarSnippet)},
		{Name: "kubelet.bu", Data: []byte(fcosSnippet)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseStrict(t, out)
	motd := fileByPath(cfg, "/etc/motd.d/lab.conf")
	if motd == nil || string(contents(t, motd)) != "Welcome to the lab" {
		t.Errorf("snippet file missing or wrong: %+v", motd)
	}
	// The snippet wins over the generated file of the same path.
	if h := fileByPath(cfg, "/etc/hostname"); h == nil || string(contents(t, h)) != "from-the-snippet" {
		t.Errorf("snippet did not override /etc/hostname")
	}
	hello := unitByName(cfg, "hello.service")
	if hello == nil || hello.Enabled == nil || !*hello.Enabled || !strings.Contains(*hello.Contents, "echo hello") {
		t.Errorf("snippet unit missing or wrong: %+v", hello)
	}
	kubelet := unitByName(cfg, "kubelet.service")
	var dropins []string
	for _, d := range kubelet.Dropins {
		dropins = append(dropins, d.Name)
	}
	if !slices.Equal(dropins, []string{"10-args.conf", "20-snippet.conf"}) || kubelet.Contents == nil {
		t.Errorf("kubelet.service after merge: contents %v, drop-ins %v", kubelet.Contents != nil, dropins)
	}
	// The generated parts are still there.
	if fileByPath(cfg, "/var/lib/kubelet/kubeconfig") == nil || unitByName(cfg, "kube-proxy.service") == nil {
		t.Error("generated file or unit lost in the merge")
	}
}

func TestLoadSnippets(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"20-kubelet.bu": fcosSnippet, "10-lab.ct": flatcarSnippet, "README": "not a snippet"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snippets, err := LoadSnippets(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range snippets {
		names = append(names, filepath.Base(s.Name))
	}
	if !slices.Equal(names, []string{"10-lab.ct", "20-kubelet.bu"}) {
		t.Errorf("snippets %v", names)
	}
	if s, err := LoadSnippets(filepath.Join(dir, "missing")); err != nil || s != nil {
		t.Errorf("missing dir: %v, %v", s, err)
	}
}

func TestBadSnippet(t *testing.T) {
	n := rendertest.Worker(rendertest.PlaceholderHostKeys())
	for _, tc := range []struct {
		name, data string
		want       []string
	}{
		{"syntax.ct", "variant: flatcar\nversion: 1.0.0\nstorage: [\n", []string{"syntax.ct"}},
		{"novariant.bu", "storage:\n  files: []\n", []string{"novariant.bu", "no variant"}},
		{"openshift.bu", "variant: openshift\nversion: 4.14.0\n", []string{"openshift.bu", "not supported"}},
		{"unknownkey.ct", "variant: flatcar\nversion: 1.0.0\nstorage:\n  filez: []\n", []string{"unknownkey.ct", "filez"}},
		{"relpath.ct", "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: relative/path\n", []string{"relpath.ct", "path not absolute"}},
		{"tooNew.bu", "variant: fcos\nversion: 1.6.0\n", []string{"tooNew.bu", "3.5.0"}},
		{"unknownversion.bu", "variant: flatcar\nversion: 9.0.0\n", []string{"unknownversion.bu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(n, []Snippet{{Name: tc.name, Data: []byte(tc.data)}})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			t.Log(err)
		})
	}
}

func TestBadNode(t *testing.T) {
	base := rendertest.Worker(rendertest.PlaceholderHostKeys())
	for name, mod := range map[string]func(n *nodeconfig.Node){
		"relative path":    func(n *nodeconfig.Node) { n.Files[0].Path = "etc/x" },
		"duplicate file":   func(n *nodeconfig.Node) { n.Files = append(n.Files, n.Files[0]) },
		"duplicate unit":   func(n *nodeconfig.Node) { n.Units = append(n.Units, n.Units[0]) },
		"enable and mask":  func(n *nodeconfig.Node) { n.Mask = []string{"kubelet.service"} },
		"no install":       func(n *nodeconfig.Node) { n.Units[0].Contents = "[Service]\nExecStart=/bin/true\n" },
		"bad drop-in name": func(n *nodeconfig.Node) { n.Units[1].DropIn = "10-args" },
	} {
		t.Run(name, func(t *testing.T) {
			n := base
			n.Files = slices.Clone(base.Files)
			n.Units = slices.Clone(base.Units)
			mod(&n)
			if _, err := Render(n, nil); err == nil {
				t.Fatal("no error")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	n := rendertest.ControlPlane(rendertest.PlaceholderHostKeys())
	p, err := Write(dir, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %o, want 600", p, st.Mode().Perm())
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	parseStrict(t, data)
}
