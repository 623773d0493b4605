package components

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/versions"
)

func tgz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// releaseServer serves a fake etcd and runc release on loopback in the
// upstream URL layout, under the mirror prefix.
func releaseServer(t *testing.T, corrupt bool) *httptest.Server {
	t.Helper()
	etcd := tgz(t, map[string]string{
		"etcd-v3.6.16-linux-amd64/etcd":      "etcd binary",
		"etcd-v3.6.16-linux-amd64/etcdctl":   "etcdctl binary",
		"etcd-v3.6.16-linux-amd64/README.md": "readme",
	})
	runc := []byte("runc binary")
	etcdSum, runcSum := sha(etcd), sha(runc)
	if corrupt {
		// The files are served as they are, the checksums claim otherwise.
		etcdSum, runcSum = sha([]byte("other")), sha([]byte("other runc"))
	}
	files := map[string][]byte{
		"/github.com/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-amd64.tar.gz": etcd,
		"/github.com/etcd-io/etcd/releases/download/v3.6.16/SHA256SUMS": []byte(fmt.Sprintf(
			"%s  etcd-v3.6.16-darwin-arm64.zip\n%s  etcd-v3.6.16-linux-amd64.tar.gz\n", sha([]byte("x")), etcdSum)),
		"/github.com/opencontainers/runc/releases/download/v1.5.2/runc.amd64":     runc,
		"/github.com/opencontainers/runc/releases/download/v1.5.2/runc.sha256sum": []byte(runcSum + " *runc.amd64\n"),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func releaseResolved(t *testing.T, srv *httptest.Server) *resolved {
	root := t.TempDir()
	rs := newReleaseSource(srv.URL+"/", nil)
	rs.client = srv.Client()
	return &resolved{Options: Options{Source: SourceRelease, Progress: io.Discard}, root: root, src: rs}
}

func TestReleaseDownloadVerified(t *testing.T) {
	srv := releaseServer(t, false)
	r := releaseResolved(t, srv)
	ctx := context.Background()
	for _, p := range []part{
		{"etcd", "v3.6.16", []string{"bin/etcd", "bin/etcdctl"}},
		{"runc", "v1.5.2", []string{"bin/runc"}},
	} {
		dir, err := r.buildPart(ctx, p)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		for _, f := range p.files {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Base(f) + " binary"; string(b) != want {
				t.Errorf("%s = %q, want %q", f, b, want)
			}
			if st, _ := os.Stat(filepath.Join(dir, f)); st.Mode().Perm()&0o111 == 0 {
				t.Errorf("%s is not executable: %v", f, st.Mode())
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "bin", "README.md")); err == nil {
			t.Error("unrequested archive member extracted")
		}
	}
}

func TestReleaseChecksumMismatchRefused(t *testing.T) {
	srv := releaseServer(t, true)
	r := releaseResolved(t, srv)
	for _, p := range []part{
		{"etcd", "v3.6.16", []string{"bin/etcd", "bin/etcdctl"}},
		{"runc", "v1.5.2", []string{"bin/runc"}},
	} {
		_, err := r.buildPart(context.Background(), p)
		if err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("%s: want a checksum mismatch, got %v", p.name, err)
		}
	}
	// Nothing may be cached: no part directory, no leftovers.
	var left []string
	filepath.Walk(r.root, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			left = append(left, path)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("files left in the cache after refused downloads: %v", left)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.root, ".parts")); len(ents) > 0 {
		t.Errorf("part cached despite a bad checksum: %v", ents)
	}
}

func TestParseChecksum(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, c := range []struct {
		text, file, want string
		ok               bool
	}{
		{h + "\n", "x", h, true},
		{strings.ToUpper(h), "x", h, true},
		{h + "  other.tgz\n" + strings.Repeat("cd", 32) + "  x.tgz\n", "x.tgz", strings.Repeat("cd", 32), true},
		{h + " *./x.tgz", "x.tgz", h, true},
		{h + "  other.tgz\n", "x.tgz", "", false},
		{"not a checksum", "x", "", false},
	} {
		got, err := parseChecksum(c.text, c.file)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseChecksum(%q, %q) = %q, %v", c.text, c.file, got, err)
		}
	}
}

func TestReleaseArtifactsCoverParts(t *testing.T) {
	for _, p := range partsFor(versions.Default(), "v1.37.2") {
		arts, err := artifacts(p)
		if fromModules(p) {
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		outs := map[string]bool{}
		for _, a := range arts {
			if !strings.HasPrefix(a.url, "https://") || !strings.HasPrefix(a.checksum, "https://") {
				t.Errorf("%s: non-https URL %s / %s", p.name, a.url, a.checksum)
			}
			if a.outPath != "" {
				outs[a.outPath] = true
			}
			for _, o := range a.members {
				outs[o] = true
			}
		}
		for _, f := range p.files {
			if !outs[f] {
				t.Errorf("%s: release artifacts do not provide %s", p.name, f)
			}
		}
	}
}
