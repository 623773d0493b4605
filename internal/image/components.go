package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// Components is a directory of built node components in the layout the
// components package writes:
//
//	bin/<binary>  cni/<plugin>  images/<name>.tar  manifest.json
//
// The image builder only reads it; it does not know how it was built.
type Components struct {
	Dir string
	// Files maps each file relative to Dir (bin/kubelet) to its sha256:
	// taken from the manifest where it lists one, computed otherwise.
	Files map[string]string
	// Versions and Images are copied from the manifest for the image's own
	// manifest.
	Versions map[string]string
	Images   []ComponentImage
	// ManifestSHA256 is the sha256 of manifest.json as found.
	ManifestSHA256 string
}

// ComponentImage is one container image tarball of the components.
type ComponentImage struct {
	Ref  string `json:"ref"`
	File string `json:"file"`
}

// componentsManifest is the part of the components manifest kubelab's image
// builder reads; unknown fields are ignored.
type componentsManifest struct {
	Versions map[string]string `json:"versions"`
	Files    map[string]struct {
		SHA256 string `json:"sha256"`
	} `json:"files"`
	Images []ComponentImage `json:"images"`
}

// componentSubdirs are the parts of a components dir that go into the image.
var componentSubdirs = []string{"bin", "cni", "images"}

// LoadComponents reads a components directory. Files the manifest does not
// list with a sha256 are hashed here, so the image cache key always covers
// every byte that goes into the image.
func LoadComponents(dir string) (Components, error) {
	c := Components{Dir: dir, Files: map[string]string{}}
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return c, fmt.Errorf("read components manifest in %s (build components first): %w", dir, err)
	}
	sum := sha256.Sum256(raw)
	c.ManifestSHA256 = hex.EncodeToString(sum[:])
	var m componentsManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return c, fmt.Errorf("parse components manifest %s: %w", filepath.Join(dir, "manifest.json"), err)
	}
	c.Versions = m.Versions
	c.Images = m.Images
	for _, sub := range componentSubdirs {
		root := filepath.Join(dir, sub)
		if _, err := os.Stat(root); os.IsNotExist(err) {
			continue
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			rel = filepath.ToSlash(rel)
			if f, ok := m.Files[rel]; ok && f.SHA256 != "" {
				c.Files[rel] = f.SHA256
				return nil
			}
			h, err := fileSHA256(p)
			if err != nil {
				return err
			}
			c.Files[rel] = h
			return nil
		})
		if err != nil {
			return c, fmt.Errorf("read components %s: %w", root, err)
		}
	}
	if len(c.Files) == 0 {
		return c, fmt.Errorf("components dir %s has no files under bin/, cni/ or images/", dir)
	}
	return c, nil
}

// names lists the files of one subdirectory (bin, cni, images), sorted.
func (c Components) names(sub string) []string {
	var out []string
	for rel := range c.Files {
		if filepath.Dir(rel) == sub {
			out = append(out, filepath.Base(rel))
		}
	}
	sort.Strings(out)
	return out
}

// NewestComponents returns the most recently modified directory under
// <cacheDir>/components that holds a manifest.json.
func NewestComponents(cacheDir string) (string, error) {
	base := filepath.Join(cacheDir, "components")
	entries, err := os.ReadDir(base)
	if err != nil {
		return "", fmt.Errorf("no components in %s (run the components build first, or pass --components): %w", base, err)
	}
	var best string
	var bestTime int64
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		st, err := os.Stat(filepath.Join(base, e.Name(), "manifest.json"))
		if err != nil {
			continue
		}
		if t := st.ModTime().UnixNano(); best == "" || t > bestTime {
			best, bestTime = filepath.Join(base, e.Name()), t
		}
	}
	if best == "" {
		return "", fmt.Errorf("no complete components under %s (run the components build first, or pass --components)", base)
	}
	return best, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// HasIgnition tells whether a component set carries Ignition, which makes
// the image provisionable by Ignition.
func (c Components) HasIgnition() bool {
	return slices.Contains(c.names("bin"), "ignition")
}
