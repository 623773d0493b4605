package nodeconfig

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"path"
	"strings"
)

// Change is what a running node needs to go from one configuration to
// another without re-provisioning: files to write, unit files to replace
// (then a daemon-reload), and the units to restart because something they
// read changed.
type Change struct {
	Files   []File
	Units   []Unit
	Restart []string // in the order of the node's units
}

// Empty reports whether the node needs nothing.
func (c Change) Empty() bool { return len(c.Files) == 0 && len(c.Units) == 0 && len(c.Restart) == 0 }

// UnitPath is where a unit (or its drop-in) lives on the node.
func UnitPath(u Unit) string {
	if u.DropIn != "" {
		return path.Join(SystemdUnitDir, u.Name+".d", u.DropIn)
	}
	return path.Join(SystemdUnitDir, u.Name)
}

// Diff says what changed from old to new. A unit is restarted when its own
// file changed, or when it names a changed file on its command line, or
// names a file that names one (the kubelet's configuration names its
// serving certificate, say). Files old had and new lacks are left alone.
func Diff(old, new Node) Change {
	oldFiles := map[string]File{}
	for _, f := range old.Files {
		oldFiles[f.Path] = f
	}
	oldUnits := map[string]string{}
	for _, u := range old.Units {
		oldUnits[UnitPath(u)] = u.Contents
	}
	return diff(new, func(f File) bool {
		o, ok := oldFiles[f.Path]
		return !ok || !bytes.Equal(o.Contents, f.Contents) || o.Mode != f.Mode || o.Owner != f.Owner || o.Group != f.Group
	}, func(u Unit) bool {
		c, ok := oldUnits[UnitPath(u)]
		return !ok || c != u.Contents
	})
}

// FileState is what a node holds at a path.
type FileState struct {
	SHA256       string // hex
	Mode         uint32
	Owner, Group string
}

// StateOf is the state a file of the configuration should have.
func StateOf(path string, mode uint32, owner, group string, contents []byte) FileState {
	sum := sha256.Sum256(contents)
	if owner == "" {
		owner = "root"
	}
	if group == "" {
		group = "root"
	}
	return FileState{SHA256: hex.EncodeToString(sum[:]), Mode: mode, Owner: owner, Group: group}
}

// DiffState says what a running node lacks of new, given what it holds
// (by path; a missing path is a missing file), with Diff's restart rules.
// Comparing with the node itself, not with an earlier rendering, makes an
// interrupted delivery complete when it is run again.
func DiffState(have map[string]FileState, new Node) Change {
	return diff(new, func(f File) bool {
		h, ok := have[f.Path]
		return !ok || h != StateOf(f.Path, f.Mode, f.Owner, f.Group, f.Contents)
	}, func(u Unit) bool {
		h, ok := have[UnitPath(u)]
		return !ok || h != StateOf(UnitPath(u), 0o644, "root", "root", []byte(u.Contents))
	})
}

// Paths lists every file and unit file path of n, for asking a node what it
// holds.
func (n Node) Paths() []string {
	var out []string
	for _, f := range n.Files {
		out = append(out, f.Path)
	}
	for _, u := range n.Units {
		out = append(out, UnitPath(u))
	}
	return out
}

func diff(new Node, fileChanged func(File) bool, unitChanged func(Unit) bool) Change {
	var ch Change
	changed := map[string]bool{}
	for _, f := range new.Files {
		if fileChanged(f) {
			ch.Files = append(ch.Files, f)
			changed[f.Path] = true
		}
	}
	restart := map[string]bool{}
	for _, u := range new.Units {
		if unitChanged(u) {
			ch.Units = append(ch.Units, u)
			restart[u.Name] = true
		}
	}
	for _, u := range new.Units {
		for _, p := range referenced(u.Contents, new.Files) {
			if changed[p] {
				restart[u.Name] = true
			}
		}
	}
	for _, u := range new.Units {
		if restart[u.Name] && !contains(ch.Restart, u.Name) {
			ch.Restart = append(ch.Restart, u.Name)
		}
	}
	return ch
}

// referenced lists the node files text names, and the files those name.
func referenced(text string, files []File) []string {
	var out []string
	for _, f := range files {
		if !mentions(text, f.Path) {
			continue
		}
		out = append(out, f.Path)
		for _, g := range files {
			if g.Path != f.Path && mentions(string(f.Contents), g.Path) {
				out = append(out, g.Path)
			}
		}
	}
	return out
}

// mentions reports whether text names path as a whole path, so that
// /etc/kubernetes/pki/ca.crt is not found in .../pki/ca.crt.bak.
func mentions(text, p string) bool {
	for i := 0; ; {
		j := strings.Index(text[i:], p)
		if j < 0 {
			return false
		}
		end := i + j + len(p)
		if end == len(text) || !isPathByte(text[end]) {
			return true
		}
		i = end
	}
}

func isPathByte(c byte) bool {
	return c == '.' || c == '-' || c == '_' || c == '/' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
