package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/ulikunitz/xz"
)

func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required (run hack/install-deps.sh): %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
}

// testKey makes an OpenPGP key at test time and writes its public keyring.
func testKey(t *testing.T, dir, name string) (*openpgp.Entity, string) {
	t.Helper()
	e, err := openpgp.NewEntity(name, "test", name+"@kubelab.test", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := e.Serialize(&buf); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".gpg")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return e, p
}

func sign(t *testing.T, e *openpgp.Entity, data []byte, armored bool) []byte {
	t.Helper()
	var sig bytes.Buffer
	var err error
	if armored {
		err = openpgp.ArmoredDetachSign(&sig, e, bytes.NewReader(data), nil)
	} else {
		err = openpgp.DetachSign(&sig, e, bytes.NewReader(data), nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig.Bytes()
}

// testDisk returns a small qcow2 image, compressed as asked.
func testDisk(t *testing.T, dir, compression string) []byte {
	t.Helper()
	requireTool(t, "qemu-img")
	p := filepath.Join(dir, "src.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", p, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	switch compression {
	case "gzip":
		w := gzip.NewWriter(&buf)
		w.Write(raw)
		w.Close()
	case "xz":
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(raw)
		w.Close()
	case "bzip2":
		requireTool(t, "bzip2")
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bzip2: %v", err)
		}
		buf.Write(out)
	default:
		buf.Write(raw)
	}
	return buf.Bytes()
}

func cacheEntries(t *testing.T, cache string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(cache, "imports"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestImportVerifies(t *testing.T) {
	dir := t.TempDir()
	good, goodRing := testKey(t, dir, "good")
	other, otherRing := testKey(t, dir, "other")
	_ = other
	disk := testDisk(t, dir, "xz")
	tampered := append([]byte(nil), disk...)
	tampered[len(tampered)/2] ^= 0xff

	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	img := write("flatcar_production_qemu_image.img.xz", disk)
	bad := write("tampered-flatcar.img.xz", tampered)
	sig := write("image.sig", sign(t, good, disk, false))
	asc := write("image.asc", sign(t, good, disk, true))
	otherSig := write("other.sig", sign(t, other, disk, false))

	tests := []struct {
		name    string
		opts    ImportOptions
		wantErr string
	}{
		{"good signature", ImportOptions{Source: img, Keyring: goodRing, Signature: sig}, ""},
		{"good armored signature", ImportOptions{Source: img, Keyring: goodRing, Signature: asc}, ""},
		{"good sha256", ImportOptions{Source: img, SHA256: sha256hex(disk)}, ""},
		{"good sha256 and signature", ImportOptions{Source: img, SHA256: sha256hex(disk), Keyring: goodRing, Signature: sig}, ""},
		{"tampered file", ImportOptions{Source: bad, Keyring: goodRing, Signature: sig}, "bad OpenPGP signature"},
		{"wrong key", ImportOptions{Source: img, Keyring: otherRing, Signature: sig}, "bad OpenPGP signature"},
		{"signed by another key", ImportOptions{Source: img, Keyring: goodRing, Signature: otherSig}, "bad OpenPGP signature"},
		{"wrong sha256", ImportOptions{Source: img, SHA256: sha256hex(tampered)}, "sha256 mismatch"},
		{"good signature, wrong sha256", ImportOptions{Source: img, SHA256: sha256hex(tampered), Keyring: goodRing, Signature: sig}, "sha256 mismatch"},
		{"nothing to verify with", ImportOptions{Source: img}, "unverified"},
		{"keyring without signature", ImportOptions{Source: img, Keyring: goodRing}, "go together"},
		{"bad sha256 syntax", ImportOptions{Source: img, SHA256: "xyz"}, "not a hex sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := t.TempDir()
			tt.opts.CacheDir = cache
			imp, err := Import(context.Background(), tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if left := cacheEntries(t, cache); len(left) != 0 {
					t.Fatalf("refused import left %v in the cache", left)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := imp.Manifest
			if m.Provisioning[0] != ProvisionIgnition {
				t.Errorf("provisioning = %v, want ignition guessed from flatcar", m.Provisioning)
			}
			if m.Source.Compression != "xz" || m.Source.SHA256 != sha256hex(disk) {
				t.Errorf("source = %+v", m.Source)
			}
			if tt.opts.Keyring != "" && m.Source.SignedBy == "" {
				t.Error("signer not recorded")
			}
			kept, err := os.ReadFile(filepath.Join(imp.Dir, m.Source.File))
			if err != nil || !bytes.Equal(kept, disk) {
				t.Fatalf("cache does not hold the compressed download: %v", err)
			}
		})
	}
}

func TestImportURLAndInstall(t *testing.T) {
	for _, comp := range []string{"gzip", "xz", "bzip2", "none"} {
		t.Run(comp, func(t *testing.T) {
			dir := t.TempDir()
			key, ring := testKey(t, dir, "good")
			disk := testDisk(t, dir, comp)
			sig := sign(t, key, disk, true)
			mux := http.NewServeMux()
			mux.HandleFunc("/images/debian-12-generic.img", func(w http.ResponseWriter, _ *http.Request) { w.Write(disk) })
			mux.HandleFunc("/images/debian-12-generic.img.asc", func(w http.ResponseWriter, _ *http.Request) { w.Write(sig) })
			srv := httptest.NewServer(mux) // loopback only
			defer srv.Close()

			cache, lab := t.TempDir(), t.TempDir()
			imp, err := Import(context.Background(), ImportOptions{
				Source: srv.URL + "/images/debian-12-generic.img", Keyring: ring,
				Signature: srv.URL + "/images/debian-12-generic.img.asc", CacheDir: cache, Client: srv.Client(),
			})
			if err != nil {
				t.Fatal(err)
			}
			if imp.Manifest.Provisioning[0] != ProvisionCloudInit || imp.Manifest.Name != "debian-12-generic" {
				t.Errorf("manifest = %+v", imp.Manifest)
			}
			if imp.Manifest.Source.Compression != comp {
				t.Errorf("compression = %s, want %s", imp.Manifest.Source.Compression, comp)
			}
			dest, err := InstallImported(context.Background(), imp, lab, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("qemu-img", "info", filepath.Join(dest, DiskFile)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "file format: qcow2") || !strings.Contains(string(out), "64 MiB") {
				t.Fatalf("installed disk is not the 64 MiB qcow2: %v\n%s", err, out)
			}
			listed, err := List(lab)
			if err != nil || len(listed) != 1 || listed[0].Manifest.Kind != "imported" {
				t.Fatalf("List = %+v, %v", listed, err)
			}
			if listed[0].Manifest.Artifacts[DiskFile] == "" {
				t.Error("disk checksum missing from the lab manifest")
			}
		})
	}
}

func TestImportURLRefusedLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	key, ring := testKey(t, dir, "good")
	disk := testDisk(t, dir, "gzip")
	sig := sign(t, key, disk, false)
	tampered := append([]byte(nil), disk...)
	tampered[10] ^= 1
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".sig") {
			w.Write(sig)
			return
		}
		w.Write(tampered)
	}))
	defer srv.Close()
	cache := t.TempDir()
	_, err := Import(context.Background(), ImportOptions{Source: srv.URL + "/fcos.qcow2.gz", Keyring: ring,
		Signature: srv.URL + "/fcos.qcow2.gz.sig", CacheDir: cache, Client: srv.Client()})
	if err == nil || !strings.Contains(err.Error(), "bad OpenPGP signature") {
		t.Fatalf("err = %v, want a refused signature", err)
	}
	if left := cacheEntries(t, cache); len(left) != 0 {
		t.Fatalf("refused import left %v in the cache", left)
	}
	if _, err := Import(context.Background(), ImportOptions{Source: srv.URL + "/missing", SHA256: sha256hex(disk),
		CacheDir: cache, Client: srv.Client()}); err == nil {
		t.Fatal("sha mismatch over HTTP accepted")
	}
}

func TestGuessProvisioning(t *testing.T) {
	for name, want := range map[string]string{
		"flatcar_production_qemu_image.img.bz2":              ProvisionIgnition,
		"fedora-coreos-42.20250101.3.0-qemu.x86_64.qcow2.xz": ProvisionIgnition,
		"debian-12-genericcloud-amd64.qcow2":                 ProvisionCloudInit,
		"Rocky-9-GenericCloud-Base.latest.x86_64.qcow2":      ProvisionCloudInit,
	} {
		if got := GuessProvisioning(name); got != want {
			t.Errorf("GuessProvisioning(%q) = %s, want %s", name, got, want)
		}
	}
}
