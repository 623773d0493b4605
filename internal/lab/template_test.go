package lab

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// templatingDriver is recordingDriver plus driver.Templater: MakeTemplate
// records the template machine and marks its directory complete. The real
// template boot is tested in driver/qemu (TestNodeTemplate) and end to end.
type templatingDriver struct {
	*recordingDriver
	made []driver.Machine
}

func (d *templatingDriver) MakeTemplate(_ context.Context, t driver.Machine, marker string) error {
	d.record("template " + t.Name + " " + marker)
	d.mu.Lock()
	d.made = append(d.made, t)
	d.mu.Unlock()
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(t.Dir, "done"), nil, 0o600)
}

func (d *templatingDriver) HasTemplate(t driver.Machine) bool {
	_, err := os.Stat(filepath.Join(t.Dir, "done"))
	return err == nil
}

// templateEnv is the default lab with a kubelab image that supports
// templates and nodes that do not exist yet.
func templateEnv(t *testing.T) (*Env, *templatingDriver) {
	t.Helper()
	env, rd := snapshotEnv(t)
	rd.state = driver.StateAbsent
	d := &templatingDriver{recordingDriver: rd}
	env.Driver = d
	dir := filepath.Join(env.Layout.Images(), spec.DefaultImage)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := image.Manifest{Name: spec.DefaultImage, Kind: "kubelab", KernelCmdline: "root=LABEL=x rw",
		KernelCmdlineNoCloudInit: "cloud-init=disabled", KernelCmdlineTemplate: "kubelab.template",
		Artifacts: map[string]string{image.DiskFile: "d1", image.KernelFile: "k1", image.InitrdFile: "i1"}}
	data, _ := json.Marshal(m)
	for name, body := range map[string][]byte{image.ManifestFile: data, image.KernelFile: nil, image.InitrdFile: nil} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return env, d
}

func TestTemplatesMadeOncePerShapeAndUsed(t *testing.T) {
	env, d := templateEnv(t)
	cls := env.clusters()
	if err := env.makeTemplates(context.Background(), cls); err != nil {
		t.Fatal(err)
	}
	// The default lab's three nodes have one shape: one template.
	if len(d.made) != 1 {
		t.Fatalf("made %d templates, want 1: %v", len(d.made), d.calls)
	}
	tm := d.made[0]
	if !strings.HasSuffix(tm.Cmdline, " kubelab.template") || !strings.Contains(tm.Cmdline, "cloud-init=disabled") {
		t.Errorf("template command line %q: want the overlay node's plus kubelab.template", tm.Cmdline)
	}
	if tm.Tap != "" || tm.Netns != "" || tm.MAC == "" || tm.Config.Kind != driver.ConfigOverlay {
		t.Errorf("template machine %+v: want a NIC on nothing (MAC, no tap, no namespace) and an overlay medium", tm)
	}
	if !strings.HasPrefix(tm.Dir, filepath.Join(env.Layout.Images(), spec.DefaultImage, "templates")+"/") {
		t.Errorf("template dir %s is not beside its image", tm.Dir)
	}
	if !strings.Contains(d.calls[0], versions.TemplateMarker) {
		t.Errorf("MakeTemplate call %q does not wait for %s", d.calls[0], versions.TemplateMarker)
	}
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, err := env.Machine(c, n)
			if err != nil {
				t.Fatal(err)
			}
			if m.Template != tm.Dir {
				t.Errorf("node %s: Template %q, want %q", n.Name, m.Template, tm.Dir)
			}
			if strings.Contains(m.Cmdline, "kubelab.template") {
				t.Errorf("node %s boots with the template flag: %q", n.Name, m.Cmdline)
			}
		}
	}
	// Made: not again.
	if err := env.makeTemplates(context.Background(), cls); err != nil || len(d.made) != 1 {
		t.Errorf("second makeTemplates: %v, %d made", err, len(d.made))
	}
}

func TestTemplatesNotFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Env, *templatingDriver)
	}{
		{"--no-template", func(e *Env, _ *templatingDriver) { e.NoTemplates = true }},
		{"nodes that exist", func(_ *Env, d *templatingDriver) { d.state = driver.StateStopped }},
		{"cloud-init nodes", func(e *Env, _ *templatingDriver) {
			for ci := range e.Plan.Clusters {
				for ni := range e.Plan.Clusters[ci].Nodes {
					e.Plan.Clusters[ci].Nodes[ni].Provisioning = spec.ProvisionCloudInit
				}
			}
		}},
		{"an image without template support", func(e *Env, _ *templatingDriver) {
			p := filepath.Join(e.Layout.Images(), spec.DefaultImage, image.ManifestFile)
			m, _ := image.ReadManifest(filepath.Dir(p))
			m.KernelCmdlineTemplate = ""
			data, _ := json.Marshal(m)
			os.WriteFile(p, data, 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, d := templateEnv(t)
			tc.edit(env, d)
			if err := env.makeTemplates(context.Background(), env.clusters()); err != nil {
				t.Fatal(err)
			}
			if len(d.made) != 0 {
				t.Errorf("made a template: %+v", d.made)
			}
		})
	}
}

func TestTemplateKeyFollowsShapeAndHypervisor(t *testing.T) {
	env, d := templateEnv(t)
	c := env.Plan.Clusters[0]
	n := c.Nodes[0]
	manifest, err := image.ReadManifest(filepath.Join(env.Layout.Images(), spec.DefaultImage))
	if err != nil {
		t.Fatal(err)
	}
	dirOf := func(e *Env, n2 func(*driver.Machine)) string {
		m, err := e.Machine(c, n)
		if err != nil {
			t.Fatal(err)
		}
		if n2 != nil {
			n2(&m)
		}
		tm, ok := e.templateMachine(m, n, manifest)
		if !ok {
			t.Fatal("no template for an overlay node")
		}
		return tm.Dir
	}
	base := dirOf(env, nil)
	for name, edit := range map[string]func(*driver.Machine){
		"memory":  func(m *driver.Machine) { m.MemoryMiB++ },
		"cpus":    func(m *driver.Machine) { m.CPUs++ },
		"disk":    func(m *driver.Machine) { m.DiskGiB++ },
		"cmdline": func(m *driver.Machine) { m.Cmdline += " x" },
	} {
		if dirOf(env, edit) == base {
			t.Errorf("another %s, same template %s", name, base)
		}
	}
	other, _ := templateEnv(t)
	other.Driver.(*templatingDriver).compat = "QEMU 8.0; accel tcg"
	other.Layout = env.Layout
	if dirOf(other, nil) == base {
		t.Error("another QEMU version, same template")
	}
	_ = d
}
