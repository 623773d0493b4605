package image

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func baseInputs(t *testing.T) Inputs {
	t.Helper()
	in, err := DefaultInputs(Components{Files: map[string]string{"bin/kubelet": "aa", "images/pause.tar": "bb"}})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestInputsHashChangesExactlyWithInputs(t *testing.T) {
	ref := baseInputs(t).Hash()
	if again := baseInputs(t).Hash(); again != ref {
		t.Fatalf("same inputs, different hash: %s vs %s", ref, again)
	}
	tests := []struct {
		name    string
		mutate  func(*Inputs)
		changes bool
	}{
		{"nothing", func(*Inputs) {}, false},
		{"package order", func(in *Inputs) {
			in.Packages[0], in.Packages[1] = in.Packages[1], in.Packages[0]
		}, false},
		{"package added", func(in *Inputs) { in.Packages = append(in.Packages, "curl") }, true},
		{"package removed", func(in *Inputs) { in.Packages = in.Packages[1:] }, true},
		{"component sha", func(in *Inputs) { in.ComponentsSHA["bin/kubelet"] = "cc" }, true},
		{"component added", func(in *Inputs) { in.ComponentsSHA["bin/etcd"] = "dd" }, true},
		{"baked unit", func(in *Inputs) { in.BakedFilesSHA["kubelab-ready.service"] = "00" }, true},
		{"baked script added", func(in *Inputs) { in.BakedFilesSHA["new-script"] = "00" }, true},
		{"mmdebstrap option", func(in *Inputs) { in.MmdebstrapOpts = append(in.MmdebstrapOpts, "--dpkgopt=x") }, true},
		{"suite", func(in *Inputs) { in.Suite = "trixie" }, true},
		{"sources", func(in *Inputs) { in.Sources = in.Sources[:1] }, true},
		{"disk size", func(in *Inputs) { in.DiskSize = "4G" }, true},
		{"kernel cmdline", func(in *Inputs) { in.KernelCmdline += " quiet" }, true},
		{"builder version", func(in *Inputs) { in.Builder = "other" }, true},
	}
	refBase := baseInputs(t).BaseHash()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := baseInputs(t)
			tt.mutate(&in)
			if got := in.Hash() != ref; got != tt.changes {
				t.Errorf("hash changed = %v, want %v", got, tt.changes)
			}
			// The base system depends on what mmdebstrap sees, nothing else.
			baseInput := map[string]bool{"package added": true, "package removed": true,
				"mmdebstrap option": true, "suite": true, "sources": true, "builder version": true}
			if got := in.BaseHash() != refBase; got != baseInput[tt.name] {
				t.Errorf("base hash changed = %v, want %v", got, baseInput[tt.name])
			}
		})
	}
}

func TestBakedFilesAreAllHashed(t *testing.T) {
	h, err := bakedFileHashes()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kubelab-overlay.service", "kubelab-images.service", "kubelab-ready.service",
		"apply-overlay", "import-images", "ready", "99-kubelab.cfg"} {
		if h[want] == "" {
			t.Errorf("baked file %s is not part of the inputs hash", want)
		}
	}
}

func TestLoadComponentsHashesWhatTheManifestOmits(t *testing.T) {
	dir := t.TempDir()
	for p, data := range map[string]string{
		"bin/kubelet":      "kubelet",
		"bin/etcd":         "etcd",
		"cni/bridge":       "bridge",
		"images/pause.tar": "pause",
		"manifest.json": `{"versions":{"Kubernetes":"v1.37.2"},
			"files":{"bin/kubelet":{"sha256":"from-manifest"}},
			"images":[{"ref":"registry.k8s.io/pause:3.10.2","file":"images/pause.tar"}]}`,
	} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := LoadComponents(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.Files["bin/kubelet"] != "from-manifest" {
		t.Errorf("kubelet sha = %q, want the manifest's", c.Files["bin/kubelet"])
	}
	if want := sha256hex([]byte("etcd")); c.Files["bin/etcd"] != want {
		t.Errorf("etcd sha = %q, want a computed sha256", c.Files["bin/etcd"])
	}
	if len(c.Files) != 4 {
		t.Errorf("files = %v, want 4 (manifest.json excluded)", c.Files)
	}
	if got := c.names("bin"); len(got) != 2 || got[0] != "etcd" || got[1] != "kubelet" {
		t.Errorf("bin names = %v", got)
	}
	if c.Versions["Kubernetes"] != "v1.37.2" || len(c.Images) != 1 {
		t.Errorf("versions/images not read: %v %v", c.Versions, c.Images)
	}
	if _, err := LoadComponents(t.TempDir()); err == nil {
		t.Error("empty components dir accepted")
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestSafeRemoveAllRefusesMounts(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "root", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// /proc is always a mount point: it must be seen (checked without
	// removing anything).
	if m, err := mountsBelow("/proc"); err != nil || len(m) == 0 {
		t.Fatalf("mounts at /proc not found: %v %v", m, err)
	}
	if err := safeRemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", dir, err)
	}
	if got := unescapeMount(`/a\040b`); got != "/a b" {
		t.Errorf("unescape = %q", got)
	}
}
