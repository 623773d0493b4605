package image

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Install puts the image in srcDir (a cache entry) into the lab as
// <labDir>/images/<name>/. Files are hard-linked where possible (the disk is
// only ever a read-only backing file), copied otherwise.
func Install(srcDir, labDir, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("install image: invalid image name %q", name)
	}
	m, err := ReadManifest(srcDir)
	if err != nil {
		return "", fmt.Errorf("install image from %s: %w", srcDir, err)
	}
	dest := filepath.Join(labDir, "images", name)
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return "", fmt.Errorf("install image: %w", err)
	}
	files := []string{ManifestFile}
	for f := range m.Artifacts {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		src, dst := filepath.Join(srcDir, f), filepath.Join(dest, f)
		if same(src, dst) {
			continue
		}
		_ = os.Remove(dst)
		if err := os.Link(src, dst); err == nil {
			continue
		}
		if err := copyFile(src, dst, 0o644); err != nil {
			return "", fmt.Errorf("install image %s into %s: %w", f, dest, err)
		}
	}
	return dest, nil
}

func same(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// Listed is one image of a lab.
type Listed struct {
	Dir      string
	Manifest Manifest
}

// List returns the images installed in a lab, by name.
func List(labDir string) ([]Listed, error) {
	entries, err := os.ReadDir(filepath.Join(labDir, "images"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images of %s: %w", labDir, err)
	}
	var out []Listed
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(labDir, "images", e.Name())
		m, err := ReadManifest(dir)
		if err != nil {
			continue // not an image (or a half-written one): not listed
		}
		out = append(out, Listed{Dir: dir, Manifest: m})
	}
	return out, nil
}
