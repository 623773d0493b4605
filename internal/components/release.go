package components

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// releaseSource downloads official release artifacts and refuses any whose
// sha256 does not match the checksum file published next to it.
type releaseSource struct {
	mirror string // replaces "https://" when set
	client *http.Client
	// modules builds the parts that publish no checksums (flannel).
	modules source
}

func newReleaseSource(mirror string, modules source) *releaseSource {
	return &releaseSource{mirror: mirror, client: http.DefaultClient, modules: modules}
}

// fromModules says which parts are built from source even so: flannel
// publishes no checksums, and Ignition's release binaries are built for
// Fedora CoreOS (SELinux relabelling on, ssh keys in a fragment directory).
func fromModules(p part) bool { return p.name == "flannel" || p.name == "ignition" }

func (s *releaseSource) id(p part) string {
	if fromModules(p) {
		return s.modules.id(p)
	}
	return "release"
}

// artifact is one downloadable file and where its members go.
type artifact struct {
	url      string
	checksum string            // URL of the checksum file
	members  map[string]string // archive member -> output path; nil: the file itself is outPath
	outPath  string
}

const gh = "https://github.com/"

// artifacts lists the official downloads for part p.
func artifacts(p part) ([]artifact, error) {
	v, bare := p.version, trimVersion(p.version)
	switch p.name {
	case "kubernetes":
		var out []artifact
		for _, c := range kubernetesCommands {
			u := "https://dl.k8s.io/release/" + v + "/bin/linux/amd64/" + c
			out = append(out, artifact{url: u, checksum: u + ".sha256", outPath: filepath.Join(BinDir, c)})
		}
		return out, nil
	case "etcd":
		base := gh + "etcd-io/etcd/releases/download/" + v + "/"
		dir := "etcd-" + v + "-linux-amd64/"
		return []artifact{{url: base + "etcd-" + v + "-linux-amd64.tar.gz", checksum: base + "SHA256SUMS",
			members: map[string]string{dir + "etcd": "bin/etcd", dir + "etcdctl": "bin/etcdctl"}}}, nil
	case "cni":
		u := gh + "containernetworking/plugins/releases/download/" + v + "/cni-plugins-linux-amd64-" + v + ".tgz"
		m := map[string]string{}
		for _, pl := range cniPlugins {
			m[path.Base(pl)] = filepath.Join(CNIDir, path.Base(pl))
		}
		return []artifact{{url: u, checksum: u + ".sha256", members: m}}, nil
	case "coredns":
		u := gh + "coredns/coredns/releases/download/" + v + "/coredns_" + bare + "_linux_amd64.tgz"
		return []artifact{{url: u, checksum: u + ".sha256", members: map[string]string{"coredns": "bin/coredns"}}}, nil
	case "containerd":
		u := gh + "containerd/containerd/releases/download/" + v + "/containerd-static-" + bare + "-linux-amd64.tar.gz"
		return []artifact{{url: u, checksum: u + ".sha256sum", members: map[string]string{
			"bin/containerd": "bin/containerd", "bin/containerd-shim-runc-v2": "bin/containerd-shim-runc-v2", "bin/ctr": "bin/ctr"}}}, nil
	case "runc":
		base := gh + "opencontainers/runc/releases/download/" + v + "/"
		return []artifact{{url: base + "runc.amd64", checksum: base + "runc.sha256sum", outPath: "bin/runc"}}, nil
	case "crictl":
		u := gh + "kubernetes-sigs/cri-tools/releases/download/" + v + "/crictl-" + v + "-linux-amd64.tar.gz"
		return []artifact{{url: u, checksum: u + ".sha256", members: map[string]string{"crictl": "bin/crictl"}}}, nil
	}
	return nil, fmt.Errorf("no official release with published checksums is known for %s", p.name)
}

func (s *releaseSource) url(u string) string {
	if s.mirror == "" {
		return u
	}
	return strings.TrimSuffix(s.mirror, "/") + "/" + strings.TrimPrefix(u, "https://")
}

func (s *releaseSource) fetch(ctx context.Context, p part, dir string) error {
	if fromModules(p) {
		return s.modules.fetch(ctx, p, dir)
	}
	arts, err := artifacts(p)
	if err != nil {
		return err
	}
	for _, a := range arts {
		if err := s.fetchArtifact(ctx, a, dir); err != nil {
			return err
		}
	}
	return nil
}

func (s *releaseSource) fetchArtifact(ctx context.Context, a artifact, dir string) error {
	want, err := s.checksum(ctx, a)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".download-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	got, err := s.get(ctx, s.url(a.url), f)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("checksum mismatch for %s: got sha256 %s, the published checksum is %s; refusing it (a corrupted download or a tampered mirror)", s.url(a.url), got, want)
	}
	if a.members == nil {
		if err := f.Chmod(0o755); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		out := filepath.Join(dir, a.outPath)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.Rename(f.Name(), out)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return extract(f, a.members, dir)
}

// get downloads u into w and returns the sha256 of what it wrote.
func (s *releaseSource) get(ctx context.Context, u string, w io.Writer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download %s: %s", u, resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h), resp.Body); err != nil {
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checksum fetches and parses the checksum file of a: either a bare hex
// digest or sha256sum lines naming the artifact.
func (s *releaseSource) checksum(ctx context.Context, a artifact) (string, error) {
	var b strings.Builder
	if _, err := s.get(ctx, s.url(a.checksum), &b); err != nil {
		return "", fmt.Errorf("checksum file: %w", err)
	}
	return parseChecksum(b.String(), path.Base(a.url))
}

func parseChecksum(text, file string) (string, error) {
	fields := strings.Fields(text)
	if len(fields) == 1 && hex64.MatchString(strings.ToLower(fields[0])) {
		return strings.ToLower(fields[0]), nil
	}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && hex64.MatchString(strings.ToLower(f[0])) {
			name := strings.TrimPrefix(strings.TrimPrefix(f[1], "*"), "./")
			if path.Base(name) == file {
				return strings.ToLower(f[0]), nil
			}
		}
	}
	return "", fmt.Errorf("no sha256 for %s in the checksum file", file)
}

// extract writes the wanted members of a .tar.gz to dir.
func extract(r io.Reader, members map[string]string, dir string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("open archive: %w", err)
	}
	tr := tar.NewReader(gz)
	found := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		out, ok := members[strings.TrimPrefix(h.Name, "./")]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		dst := filepath.Join(dir, out)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		found[out] = true
	}
	for m, out := range members {
		if !found[out] {
			return fmt.Errorf("archive has no %s", m)
		}
	}
	return nil
}
