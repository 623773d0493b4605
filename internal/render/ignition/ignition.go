// Package ignition renders a node description as an Ignition config (spec
// 3.4.0, what Flatcar and Fedora CoreOS read) and merges the cluster's
// Butane snippets into it, like the Xen guide's .ct files.
package ignition

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"

	butane "github.com/coreos/butane/config"
	butanecommon "github.com/coreos/butane/config/common"
	"github.com/coreos/ignition/v2/config/util"
	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/coreos/ignition/v2/config/validate"

	// clarketm/json is encoding/json that honours omitempty on structs: the
	// ignition types are full of optional structs, and the Ignition tools
	// marshal them the same way.
	json "github.com/clarketm/json"

	"go.yaml.in/yaml/v3"

	"github.com/kubelab/kubelab/internal/fsutil"
	"github.com/kubelab/kubelab/internal/nodeconfig"
)

// FileName is the rendered config's name in the node directory.
const FileName = "ignition.json"

// Version is the Ignition spec version kubelab emits.
const Version = "3.4.0"

// Snippet is one Butane config (variant flatcar or fcos) merged into the
// generated config; its settings win where both set the same file or unit.
type Snippet struct {
	Name string // file name, for error messages
	Data []byte
	// FilesDir is where "local:" references of the snippet are resolved;
	// empty allows none.
	FilesDir string
}

// LoadSnippets reads the Butane snippets of a directory (*.bu, *.ct,
// *.yaml, *.yml), sorted by name so the merge order is stable. A missing
// directory has none.
func LoadSnippets(dir string) ([]Snippet, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read butane snippets: %w", err)
	}
	var out []Snippet
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".bu", ".ct", ".yaml", ".yml":
		default:
			continue
		}
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read butane snippet: %w", err)
		}
		out = append(out, Snippet{Name: p, Data: data, FilesDir: dir})
	}
	return out, nil
}

// Config builds the node's Ignition config with the snippets merged in.
func Config(n nodeconfig.Node, snippets []Snippet) (types.Config, error) {
	cfg := types.Config{Ignition: types.Ignition{Version: Version}}

	users, err := passwdUsers(n.Users)
	if err != nil {
		return types.Config{}, err
	}
	cfg.Passwd.Users = users

	var files []nodeconfig.File
	files = append(files, n.Files...)
	files = append(files, n.NetworkdFiles()...)
	files = append(files, n.SystemFiles()...)
	if f, ok := sudoersFile(n); ok {
		files = append(files, f)
	}
	files = append(files, n.SSHHostKeys...)
	seen := map[string]bool{}
	for _, f := range files {
		if !strings.HasPrefix(f.Path, "/") {
			return types.Config{}, fmt.Errorf("node %s: file path %q is not absolute", n.Name, f.Path)
		}
		if seen[f.Path] {
			return types.Config{}, fmt.Errorf("node %s: file %s is given twice", n.Name, f.Path)
		}
		seen[f.Path] = true
		cfg.Storage.Files = append(cfg.Storage.Files, file(f))
	}

	units, err := systemdUnits(n)
	if err != nil {
		return types.Config{}, err
	}
	cfg.Systemd.Units = units

	for _, s := range snippets {
		child, err := translateSnippet(s)
		if err != nil {
			return types.Config{}, err
		}
		cfg = v34.Merge(cfg, child)
	}
	return cfg, nil
}

// Render returns the node's ignition.json: indented, deterministic, and
// checked by Ignition's own validator (errors and warnings both fail).
func Render(n nodeconfig.Node, snippets []Snippet) ([]byte, error) {
	cfg, err := Config(n, snippets)
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("node %s: encode ignition config: %w", n.Name, err)
	}
	out = append(out, '\n')
	if rpt := validate.ValidateWithContext(cfg, out); len(rpt.Entries) > 0 {
		return nil, fmt.Errorf("node %s: generated ignition config does not validate:\n%s", n.Name, rpt.String())
	}
	return out, nil
}

// Write renders the config into dir/ignition.json, mode 0600 (it holds
// private keys), and returns the file's path.
func Write(dir string, n nodeconfig.Node, snippets []Snippet) (string, error) {
	out, err := Render(n, snippets)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, FileName)
	if err := writeFile(p, out); err != nil {
		return "", err
	}
	return p, nil
}

func writeFile(p string, data []byte) error {
	return fsutil.WriteFile(p, data, 0o600, 0o700) // it carries private keys
}

func passwdUsers(users []nodeconfig.User) ([]types.PasswdUser, error) {
	var out []types.PasswdUser
	for _, u := range users {
		if u.Name == "" {
			return nil, fmt.Errorf("a user without a name")
		}
		pu := types.PasswdUser{Name: u.Name}
		for _, k := range u.SSHAuthorizedKeys {
			pu.SSHAuthorizedKeys = append(pu.SSHAuthorizedKeys, types.SSHAuthorizedKey(strings.TrimSpace(k)))
		}
		for _, g := range u.Groups {
			pu.Groups = append(pu.Groups, types.Group(g))
		}
		out = append(out, pu)
	}
	return out, nil
}

// SudoersPath gives the users with Sudo passwordless sudo: Ignition has no
// field for it.
const SudoersPath = "/etc/sudoers.d/90-kubelab"

func sudoersFile(n nodeconfig.Node) (nodeconfig.File, bool) {
	var names []string
	for _, u := range n.Users {
		if u.Sudo && u.Name != "root" {
			names = append(names, u.Name)
		}
	}
	if len(names) == 0 {
		return nodeconfig.File{}, false
	}
	var b strings.Builder
	b.WriteString("# generated by kubelab from " + n.Source + "\n")
	for _, name := range names {
		b.WriteString(name + " ALL=(ALL) NOPASSWD:ALL\n")
	}
	return nodeconfig.File{Path: SudoersPath, Mode: 0o440, Owner: "root", Group: "root", Contents: []byte(b.String())}, true
}

func file(f nodeconfig.File) types.File {
	out := types.File{
		Node: types.Node{Path: f.Path, Overwrite: util.BoolToPtr(true)},
		FileEmbedded1: types.FileEmbedded1{
			Contents: types.Resource{Source: util.StrToPtr(dataURL(f.Contents))},
			Mode:     util.IntToPtr(int(f.Mode)),
		},
	}
	if f.Owner != "" {
		out.User.Name = util.StrToPtr(f.Owner)
	}
	if f.Group != "" {
		out.Group.Name = util.StrToPtr(f.Group)
	}
	return out
}

// dataURL keeps text readable in the config (percent-encoded); anything
// else is base64.
func dataURL(b []byte) string {
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return "data:;base64," + base64.StdEncoding.EncodeToString(b)
	}
	const hex = "0123456789ABCDEF"
	var sb strings.Builder
	sb.WriteString("data:,")
	for _, c := range b {
		// RFC 3986 unreserved characters plus a few that are safe in a
		// data URL's data part stay as they are.
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~/=:@!$&'()*+;", c) >= 0 {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&15])
	}
	return sb.String()
}

func systemdUnits(n nodeconfig.Node) ([]types.Unit, error) {
	var out []types.Unit
	index := map[string]int{}
	get := func(name string) *types.Unit {
		i, ok := index[name]
		if !ok {
			i = len(out)
			index[name] = i
			out = append(out, types.Unit{Name: name})
		}
		return &out[i]
	}
	for _, u := range n.Units {
		if u.Name == "" {
			return nil, fmt.Errorf("node %s: a unit without a name", n.Name)
		}
		unit := get(u.Name)
		if u.DropIn == "" {
			if unit.Contents != nil {
				return nil, fmt.Errorf("node %s: unit %s is given twice", n.Name, u.Name)
			}
			unit.Contents = util.StrToPtr(u.Contents)
			continue
		}
		for _, d := range unit.Dropins {
			if d.Name == u.DropIn {
				return nil, fmt.Errorf("node %s: drop-in %s of %s is given twice", n.Name, u.DropIn, u.Name)
			}
		}
		unit.Dropins = append(unit.Dropins, types.Dropin{Name: u.DropIn, Contents: util.StrToPtr(u.Contents)})
	}
	masked := map[string]bool{}
	for _, name := range n.Mask {
		masked[name] = true
	}
	for _, name := range n.Enable {
		if masked[name] {
			return nil, fmt.Errorf("node %s: unit %s is both enabled and masked", n.Name, name)
		}
		get(name).Enabled = util.BoolToPtr(true)
	}
	for _, name := range n.Mask {
		get(name).Mask = util.BoolToPtr(true)
	}
	return out, nil
}

// translateSnippet turns one Butane snippet into a 3.4 config. Butane's
// warnings fail like its errors (butane --strict): a snippet that only half
// means what it says is worse than a stopped build.
func translateSnippet(s Snippet) (types.Config, error) {
	variant, err := snippetVariant(s.Data)
	if err != nil {
		return types.Config{}, fmt.Errorf("butane snippet %s: %w", s.Name, err)
	}
	opts := butanecommon.TranslateBytesOptions{}
	opts.FilesDir = s.FilesDir
	raw, rpt, err := butane.TranslateBytes(s.Data, opts)
	if err != nil || len(rpt.Entries) > 0 {
		msg := strings.TrimSpace(rpt.String())
		if err != nil && msg == "" {
			msg = err.Error()
		}
		return types.Config{}, fmt.Errorf("butane snippet %s (variant %s) does not translate:\n%s", s.Name, variant, msg)
	}
	ver, _, err := util.GetConfigVersion(raw)
	if err != nil {
		return types.Config{}, fmt.Errorf("butane snippet %s: read translated config version: %w", s.Name, err)
	}
	if ver.Compare(types.MaxVersion) > 0 {
		return types.Config{}, fmt.Errorf("butane snippet %s translates to Ignition %s, newer than the %s kubelab emits: use variant flatcar version 1.1.0 or older, or fcos 1.5.0 or older", s.Name, ver, Version)
	}
	cfg, rpt, err := v34.ParseCompatibleVersion(raw)
	if err != nil || len(rpt.Entries) > 0 {
		return types.Config{}, fmt.Errorf("butane snippet %s: translated config is not valid Ignition: %v\n%s", s.Name, err, rpt.String())
	}
	return cfg, nil
}

// snippetVariant accepts the variants whose configs Flatcar and Fedora
// CoreOS nodes read.
func snippetVariant(data []byte) (string, error) {
	var head struct {
		Variant string `yaml:"variant"`
		Version string `yaml:"version"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return "", fmt.Errorf("not YAML: %w", err)
	}
	switch head.Variant {
	case "flatcar", "fcos":
		return head.Variant + " " + head.Version, nil
	case "":
		return "", fmt.Errorf("no variant: start it with \"variant: flatcar\" (or fcos) and a version")
	default:
		return "", fmt.Errorf("variant %q is not supported: use flatcar or fcos", head.Variant)
	}
}

// sortedNames is used by tests to list a config's files and units.
func sortedNames(cfg types.Config) (files, units []string) {
	for _, f := range cfg.Storage.Files {
		files = append(files, f.Path)
	}
	for _, u := range cfg.Systemd.Units {
		units = append(units, u.Name)
	}
	sort.Strings(files)
	sort.Strings(units)
	return files, units
}
