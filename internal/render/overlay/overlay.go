// Package overlay renders a node description as a tar of the node's files,
// kubelab's own node image's fastest configuration path (xcluster's way):
// the tar is attached as a raw virtio disk and unpacked over / at early
// boot, before networking and ssh start; /etc/kubelab/overlay.json then
// says which units to enable and mask.
package overlay

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/fsutil"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/versions"
)

// FileName is the rendered overlay's name in the node directory.
const FileName = "overlay.tar"

// Meta is the content of versions.NodeOverlayMeta, read by the image's
// first-boot unit (apply-overlay). It is a contract with the image: keep
// the field names.
type Meta struct {
	Hostname string   `json:"hostname"`
	Enable   []string `json:"enable"`
	Mask     []string `json:"mask"`
}

// entry is one file of the tar.
type entry struct {
	path  string // absolute path on the node
	mode  uint32
	owner string
	group string
	data  []byte
}

// secretDir reports directories that must not be readable by others.
func secretDir(p string) bool {
	return p == "/root" || path.Base(p) == ".ssh"
}

// Render returns the node's overlay tar: entries sorted by path, parent
// directories included, zero timestamps, owners by name (uid/gid 0: GNU tar
// running as root maps names to the image's ids), padded to a multiple of
// 512 bytes so it can be attached as a disk.
func Render(n nodeconfig.Node) ([]byte, error) {
	entries, err := entries(n)
	if err != nil {
		return nil, err
	}

	files := map[string]entry{}
	dirs := map[string]bool{}
	for _, e := range entries {
		if !path.IsAbs(e.path) || path.Clean(e.path) != e.path || e.path == "/" {
			return nil, fmt.Errorf("node %s: file path %q is not a clean absolute path", n.Name, e.path)
		}
		if _, dup := files[e.path]; dup {
			return nil, fmt.Errorf("node %s: file %s is given twice", n.Name, e.path)
		}
		files[e.path] = e
		for d := path.Dir(e.path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for p := range files {
		if dirs[p] {
			return nil, fmt.Errorf("node %s: %s is both a file and a directory", n.Name, p)
		}
	}

	var names []string
	for p := range files {
		names = append(names, p)
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, p := range names {
		name := strings.TrimPrefix(p, "/")
		var h *tar.Header
		var data []byte
		if dirs[p] {
			mode := int64(0o755)
			if secretDir(p) {
				mode = 0o700
			}
			h = &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uname: "root", Gname: "root"}
		} else {
			e := files[p]
			owner, group := e.owner, e.group
			if owner == "" {
				owner = "root"
			}
			if group == "" {
				group = owner
			}
			data = e.data
			h = &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(e.mode & 0o7777),
				Size: int64(len(data)), Uname: owner, Gname: group}
		}
		h.ModTime, h.Format = epoch, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("node %s: overlay entry %s: %w", n.Name, p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("node %s: overlay entry %s: %w", n.Name, p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("node %s: close overlay tar: %w", n.Name, err)
	}
	if pad := buf.Len() % 512; pad != 0 {
		buf.Write(make([]byte, 512-pad))
	}
	return buf.Bytes(), nil
}

// entries collects everything the overlay carries.
func entries(n nodeconfig.Node) ([]entry, error) {
	var out []entry
	add := func(f nodeconfig.File) {
		out = append(out, entry{path: f.Path, mode: f.Mode, owner: f.Owner, group: f.Group, data: f.Contents})
	}
	for _, f := range n.Files {
		add(f)
	}
	for _, u := range n.Units {
		if u.Name == "" {
			return nil, fmt.Errorf("node %s: a unit without a name", n.Name)
		}
		add(nodeconfig.File{Path: u.UnitFile(), Mode: 0o644, Contents: []byte(u.Contents)})
	}
	for _, f := range n.NetworkdFiles() {
		add(f)
	}
	for _, f := range n.SystemFiles() {
		add(f)
	}
	for _, u := range n.Users {
		if u.Name != "root" {
			// Unpacking files cannot create accounts.
			return nil, fmt.Errorf("node %s: the overlay configures only root, not user %q: use ignition or cloud-init for other users", n.Name, u.Name)
		}
		var b strings.Builder
		for _, k := range u.SSHAuthorizedKeys {
			b.WriteString(strings.TrimSpace(k) + "\n")
		}
		add(nodeconfig.File{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Owner: "root", Group: "root", Contents: []byte(b.String())})
	}
	for _, f := range n.SSHHostKeys {
		add(f)
	}

	masked := map[string]bool{}
	for _, m := range n.Mask {
		masked[m] = true
	}
	for _, e := range n.Enable {
		if masked[e] {
			return nil, fmt.Errorf("node %s: unit %s is both enabled and masked", n.Name, e)
		}
	}
	meta := Meta{Hostname: n.Hostname, Enable: nonNil(n.Enable), Mask: nonNil(n.Mask)}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("node %s: encode %s: %w", n.Name, versions.NodeOverlayMeta, err)
	}
	add(nodeconfig.File{Path: versions.NodeOverlayMeta, Mode: 0o644, Contents: append(data, '\n')})
	return out, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Write renders the overlay into dir/overlay.tar, mode 0600 (it holds
// private keys), and returns the file's path.
func Write(dir string, n nodeconfig.Node) (string, error) {
	data, err := Render(n)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, FileName)
	if err := fsutil.WriteFile(p, data, 0o600, 0o700); err != nil { // it carries private keys
		return "", err
	}
	return p, nil
}
