package image

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ulikunitz/xz"
)

// Source records where an imported image came from and how it was checked.
type Source struct {
	Origin string `json:"origin"` // file path or URL as given
	File   string `json:"file"`   // the download as kept in the cache (compressed)
	SHA256 string `json:"sha256"` // of File
	// SHA256Verified is true when a given checksum matched.
	SHA256Verified bool `json:"sha256_verified"`
	// SignedBy is the fingerprint of the key whose signature verified.
	SignedBy    string `json:"signed_by,omitempty"`
	Compression string `json:"compression"` // none, gzip, bzip2, xz
}

// ImportOptions configure Import.
type ImportOptions struct {
	// Source is a local file or an http(s) URL of the (possibly compressed)
	// disk image.
	Source string
	// Keyring (armored or binary OpenPGP public keys) and Signature (a
	// detached signature of the download, file or URL) check the download.
	Keyring, Signature string
	// SHA256 is the expected hex sha256 of the download.
	SHA256 string
	// Name is the image's name (default: derived from the file name).
	Name string
	// Provisioning is ignition or cloud-init (default: guessed from the
	// name: flatcar and coreos images use Ignition).
	Provisioning string
	CacheDir     string
	Client       *http.Client // default http.DefaultClient
	Progress     io.Writer
}

// Imported is a verified foreign image in the cache.
type Imported struct {
	Dir      string // CacheDir/imports/<sha256>
	Manifest Manifest
}

// ErrUnverified is returned when an import has nothing to check it against.
var ErrUnverified = errors.New("refusing to import an unverified image: give --sha256, or --keyring with --signature")

// Import fetches a foreign image, checks its checksum and/or detached
// OpenPGP signature and keeps the download, still compressed, in the cache.
// A failed check is an error and leaves nothing in the cache.
func Import(ctx context.Context, opts ImportOptions) (Imported, error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	if opts.SHA256 == "" && opts.Keyring == "" {
		return Imported{}, ErrUnverified
	}
	if (opts.Keyring == "") != (opts.Signature == "") {
		return Imported{}, errors.New("import image: --keyring and --signature go together")
	}
	want := strings.ToLower(strings.TrimSpace(opts.SHA256))
	if want != "" {
		if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
			return Imported{}, fmt.Errorf("import image: --sha256 %q is not a hex sha256", opts.SHA256)
		}
	}
	base := baseName(opts.Source)
	name := opts.Name
	if name == "" {
		name = defaultImageName(base)
	}
	prov := opts.Provisioning
	if prov == "" {
		prov = GuessProvisioning(base)
	}
	if prov != ProvisionIgnition && prov != ProvisionCloudInit {
		return Imported{}, fmt.Errorf("import image: provisioning %q: want ignition or cloud-init", prov)
	}
	importsDir := filepath.Join(opts.CacheDir, "imports")
	if err := os.MkdirAll(importsDir, 0o755); err != nil {
		return Imported{}, fmt.Errorf("import image: %w", err)
	}
	work, err := os.MkdirTemp(importsDir, ".import-")
	if err != nil {
		return Imported{}, fmt.Errorf("import image: %w", err)
	}
	// Until the final rename, everything lives in work and goes with it.
	defer os.RemoveAll(work)

	start := time.Now()
	file := filepath.Join(work, base)
	got, err := fetch(ctx, opts.Client, opts.Source, file)
	if err != nil {
		return Imported{}, err
	}
	fmt.Fprintf(progress, "image: %-20s %6.1fs\n", "fetch", time.Since(start).Seconds())
	src := Source{Origin: opts.Source, File: base, SHA256: got}
	if want != "" {
		if got != want {
			return Imported{}, fmt.Errorf("import image %s: sha256 mismatch: got %s, want %s; refused, nothing cached", opts.Source, got, want)
		}
		src.SHA256Verified = true
	}
	if opts.Keyring != "" {
		start = time.Now()
		fp, err := verifySignature(ctx, opts.Client, file, opts.Keyring, opts.Signature, filepath.Join(work, "signature"))
		if err != nil {
			return Imported{}, fmt.Errorf("import image %s: %w; refused, nothing cached", opts.Source, err)
		}
		src.SignedBy = fp
		fmt.Fprintf(progress, "image: %-20s %6.1fs (signed by %s)\n", "verify signature", time.Since(start).Seconds(), fp)
	}
	_ = os.Remove(filepath.Join(work, "signature"))
	comp, err := sniffCompression(file)
	if err != nil {
		return Imported{}, err
	}
	src.Compression = comp
	m := Manifest{
		Name:         name,
		Kind:         "imported",
		Created:      time.Now().UTC().Format(time.RFC3339),
		Provisioning: []string{prov},
		Source:       &src,
		Artifacts:    map[string]string{base: got},
	}
	if err := writeManifest(work, m); err != nil {
		return Imported{}, err
	}
	final := filepath.Join(importsDir, got)
	if _, err := os.Stat(filepath.Join(final, ManifestFile)); err == nil {
		// Same bytes imported before: keep the old entry, refresh the manifest.
		if err := writeManifest(final, m); err != nil {
			return Imported{}, err
		}
		return Imported{Dir: final, Manifest: m}, nil
	}
	_ = os.RemoveAll(final)
	if err := os.Rename(work, final); err != nil {
		return Imported{}, fmt.Errorf("store import in cache %s: %w", final, err)
	}
	return Imported{Dir: final, Manifest: m}, nil
}

// GuessProvisioning says how an image is configured, from its name.
func GuessProvisioning(name string) string {
	n := strings.ToLower(name)
	if strings.Contains(n, "flatcar") || strings.Contains(n, "coreos") {
		return ProvisionIgnition
	}
	return ProvisionCloudInit
}

// InstallImported decompresses an imported image into
// <labDir>/images/<name>/disk.qcow2 (converting raw images to qcow2) and
// writes its manifest there.
func InstallImported(ctx context.Context, imp Imported, labDir, name string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	if name == "" {
		name = imp.Manifest.Name
	}
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("install image: invalid image name %q", name)
	}
	if imp.Manifest.Source == nil {
		return "", fmt.Errorf("install image: %s is not an imported image", imp.Dir)
	}
	dest := filepath.Join(labDir, "images", name)
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return "", fmt.Errorf("install image: %w", err)
	}
	start := time.Now()
	plain := filepath.Join(dest, ".disk.decompressed")
	defer os.Remove(plain)
	if err := decompress(filepath.Join(imp.Dir, imp.Manifest.Source.File), plain); err != nil {
		return "", err
	}
	disk := filepath.Join(dest, DiskFile)
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-O", "qcow2", plain, disk+".tmp").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("convert %s to qcow2: %w: %s", imp.Manifest.Source.File, err, bytes.TrimSpace(out))
	}
	if err := os.Rename(disk+".tmp", disk); err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "image: %-20s %6.1fs\n", "decompress", time.Since(start).Seconds())
	m := imp.Manifest
	m.Name = name
	if m.Artifacts, err = hashArtifacts(dest, DiskFile); err != nil {
		return "", err
	}
	if m.ApparentSize, err = virtualSize(ctx, disk); err != nil {
		return "", err
	}
	if err := writeManifest(dest, m); err != nil {
		return "", err
	}
	return dest, nil
}

func baseName(source string) string {
	if u, err := url.Parse(source); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		if b := path.Base(u.Path); b != "/" && b != "." {
			return b
		}
		return "image"
	}
	return filepath.Base(source)
}

func defaultImageName(base string) string {
	n := base
	for _, ext := range []string{".xz", ".bz2", ".gz", ".qcow2", ".img", ".raw"} {
		n = strings.TrimSuffix(n, ext)
	}
	if n == "" {
		return "imported"
	}
	return n
}

// fetch copies a file or downloads a URL to dst and returns its sha256.
func fetch(ctx context.Context, client *http.Client, source, dst string) (string, error) {
	r, err := open(ctx, client, source)
	if err != nil {
		return "", err
	}
	defer r.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), r); err != nil {
		f.Close()
		return "", fmt.Errorf("fetch %s: %w", source, err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func open(ctx context.Context, client *http.Client, source string) (io.ReadCloser, error) {
	if strings.HasPrefix(source, "http://") || strings.HasPrefix(source, "https://") {
		if client == nil {
			client = http.DefaultClient
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, source, nil)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", source, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", source, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("fetch %s: %s", source, resp.Status)
		}
		return resp.Body, nil
	}
	f, err := os.Open(source)
	if err != nil {
		return nil, fmt.Errorf("open image source: %w", err)
	}
	return f, nil
}

// verifySignature checks file against a detached (armored or binary)
// signature made by a key of the keyring and returns the key's fingerprint.
func verifySignature(ctx context.Context, client *http.Client, file, keyringPath, sigSource, sigTmp string) (string, error) {
	kr, err := readKeyring(keyringPath)
	if err != nil {
		return "", err
	}
	if _, err := fetch(ctx, client, sigSource, sigTmp); err != nil {
		return "", fmt.Errorf("read signature: %w", err)
	}
	sig, err := os.ReadFile(sigTmp)
	if err != nil {
		return "", err
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var signer *openpgp.Entity
	if bytes.HasPrefix(bytes.TrimSpace(sig), []byte("-----BEGIN")) {
		signer, err = openpgp.CheckArmoredDetachedSignature(kr, f, bytes.NewReader(sig), nil)
	} else {
		signer, err = openpgp.CheckDetachedSignature(kr, f, bytes.NewReader(sig), nil)
	}
	if err != nil {
		return "", fmt.Errorf("bad OpenPGP signature %s (keyring %s): %w", sigSource, keyringPath, err)
	}
	return strings.ToUpper(hex.EncodeToString(signer.PrimaryKey.Fingerprint)), nil
}

func readKeyring(p string) (openpgp.EntityList, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read keyring: %w", err)
	}
	var kr openpgp.EntityList
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
		kr, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		kr, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("parse keyring %s: %w", p, err)
	}
	if len(kr) == 0 {
		return nil, fmt.Errorf("keyring %s holds no keys", p)
	}
	return kr, nil
}

func sniffCompression(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 6)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "gzip", nil
	case bytes.HasPrefix(head, []byte("BZh")):
		return "bzip2", nil
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return "xz", nil
	}
	return "none", nil
}

func decompress(src, dst string) error {
	comp, err := sniffCompression(src)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	br := bufio.NewReaderSize(in, 1<<20)
	var r io.Reader
	switch comp {
	case "gzip":
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", src, err)
		}
		defer gz.Close()
		r = gz
	case "bzip2":
		r = bzip2.NewReader(br)
	case "xz":
		xr, err := xz.NewReader(br)
		if err != nil {
			return fmt.Errorf("decompress %s: %w", src, err)
		}
		r = xr
	default:
		r = br
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return fmt.Errorf("decompress %s (%s): %w", src, comp, err)
	}
	return out.Close()
}
