package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
)

// Files of a template directory (its disk layer is DiskFile, its saved
// guest StateFile), and the files a machine made from it keeps in its Dir.
const (
	// TemplateInfoFile is written last: a template without it is
	// incomplete and is made again.
	TemplateInfoFile = "template.json"
	// TemplateConfigFile is the configuration disk the guest sees: empty
	// in a template, the node's overlay tar padded to TemplateConfigSize
	// in a machine made from it (the guest knows the disk's size from the
	// template boot, so every node's must have that size).
	TemplateConfigFile = "config.img"
	// TemplatePendingFile marks a machine whose disk was made from the
	// template and that has not resumed it yet.
	TemplatePendingFile = "from-template"
)

// TemplateConfigSize is the size of the configuration disk of a template
// and of its machines; sparse, so it costs only what the tar holds.
const TemplateConfigSize = 64 << 20

var _ driver.Templater = (*Driver)(nil)

// templateInfo is what template.json records, for people and for checks.
type templateInfo struct {
	Created       string  `json:"created"`
	Compatibility string  `json:"compatibility"`
	BaseImage     string  `json:"base_image"`
	Cmdline       string  `json:"cmdline"`
	CPUs          int     `json:"cpus"`
	MemoryMiB     uint64  `json:"memory_mib"`
	DiskGiB       uint64  `json:"disk_gib"`
	BootSeconds   float64 `json:"boot_seconds"`
}

// HasTemplate implements driver.Templater.
func (d *Driver) HasTemplate(t driver.Machine) bool {
	_, err := os.Stat(filepath.Join(t.Dir, TemplateInfoFile))
	return err == nil
}

// MakeTemplate implements driver.Templater.
func (d *Driver) MakeTemplate(ctx context.Context, t driver.Machine, marker string) error {
	if d.HasTemplate(t) {
		return nil
	}
	if t.Tap != "" || t.MAC == "" || t.Config.Kind != driver.ConfigOverlay {
		return fmt.Errorf("template %s: wants a MAC without a tap and an overlay configuration medium", t.ID())
	}
	t.Config.Path = filepath.Join(t.Dir, TemplateConfigFile)
	t.Template = ""
	if err := d.check(t); err != nil {
		return err
	}
	compat, err := d.StateCompatibility(ctx)
	if err != nil {
		return err
	}
	// What an interrupted attempt left is of no use.
	if pid, alive := d.process(t); alive {
		if err := d.kill(ctx, t, pid); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(t.Dir); err != nil {
		return fmt.Errorf("template %s: %w", t.ID(), err)
	}
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return fmt.Errorf("template %s: %w", t.ID(), err)
	}
	fail := func(err error) error {
		if pid, alive := d.process(t); alive {
			_ = d.kill(context.Background(), t, pid)
		}
		console, _ := os.ReadFile(d.ConsolePath(t))
		_ = os.RemoveAll(t.Dir)
		return fmt.Errorf("template %s: %w\n--- last lines of its console ---\n%s", t.ID(), err, tailLines(string(console), 30))
	}
	if err := d.createDisk(ctx, t); err != nil {
		return fail(err)
	}
	if err := writeSparse(t.Config.Path, nil, TemplateConfigSize); err != nil {
		return fail(err)
	}
	start := time.Now()
	if err := d.launch(ctx, t); err != nil {
		return fail(err)
	}
	alive := func() bool { _, ok := d.process(t); return ok }
	if err := driver.WaitConsole(ctx, d.ConsolePath(t), 0, marker, alive); err != nil {
		return fail(fmt.Errorf("boot to %q: %w", marker, err))
	}
	boot := time.Since(start)
	if err := d.Pause(ctx, t); err != nil {
		return fail(err)
	}
	if err := d.migrateToFile(ctx, t, filepath.Join(t.Dir, StateFile)); err != nil {
		return fail(err)
	}
	pid, _ := d.process(t)
	if err := d.kill(ctx, t, pid); err != nil {
		return fail(err)
	}
	for _, f := range []string{PIDFile, QMPFile, StartLogFile} {
		_ = os.Remove(filepath.Join(t.Dir, f))
	}
	info, err := json.MarshalIndent(templateInfo{
		Created: time.Now().UTC().Format(time.RFC3339), Compatibility: compat,
		BaseImage: t.BaseImage, Cmdline: t.Cmdline, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DiskGiB: t.DiskGiB,
		BootSeconds: boot.Round(100 * time.Millisecond).Seconds(),
	}, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(t.Dir, TemplateInfoFile), append(info, '\n'), 0o600); err != nil {
		return fail(err)
	}
	return nil
}

// createDiskFromTemplate makes the machine's disk a layer on the template's
// and marks the machine to resume the template at its first start.
func (d *Driver) createDiskFromTemplate(ctx context.Context, m driver.Machine) error {
	for _, f := range []string{TemplateInfoFile, StateFile, DiskFile} {
		if _, err := os.Stat(filepath.Join(m.Template, f)); err != nil {
			return fmt.Errorf("machine %s: template: %w", m.ID(), err)
		}
	}
	tm := m
	tm.BaseImage = filepath.Join(m.Template, DiskFile)
	// The disk keeps the template's size: the saved guest knows it.
	tm.DiskGiB = 0
	if err := d.createDisk(ctx, tm); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.Dir, TemplatePendingFile), []byte(m.Template+"\n"), 0o600); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

// fromTemplate reports whether the machine's next start resumes its
// template.
func fromTemplate(m driver.Machine) bool {
	if m.Template == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(m.Dir, TemplatePendingFile))
	return err == nil
}

// startFromTemplate starts QEMU with the machine's own devices, loading the
// template's saved guest, and lets it run: it finds its configuration disk
// and applies it.
//
// The mark goes before the guest can run: once it ran, its disk has moved
// on from the template's and resuming the template again would corrupt it.
// Should QEMU fail to load the state, the next start boots the disk (the
// template's, never run on) like any node's.
func (d *Driver) startFromTemplate(ctx context.Context, m driver.Machine) error {
	state := filepath.Join(m.Template, StateFile)
	err := d.startFromState(ctx, m, state, func() error { return clearPending(m) })
	if err != nil {
		return fmt.Errorf("%w (remove %s to make the template again)", err, m.Template)
	}
	return d.Resume(ctx, m)
}

func clearPending(m driver.Machine) error {
	if err := os.Remove(filepath.Join(m.Dir, TemplatePendingFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

// padTemplateConfig writes the machine's configuration disk for a template
// start: its overlay tar, padded with zeros to the template's disk size.
func padTemplateConfig(m driver.Machine) error {
	src, err := os.ReadFile(m.Config.Path)
	if err != nil {
		return fmt.Errorf("machine %s: overlay config: %w", m.ID(), err)
	}
	if len(src) > TemplateConfigSize {
		return fmt.Errorf("machine %s: overlay config %s is %d bytes; a node made from a template takes at most %d (leave files out, or boot without a template)", m.ID(), m.Config.Path, len(src), TemplateConfigSize)
	}
	if err := writeSparse(filepath.Join(m.Dir, TemplateConfigFile), src, TemplateConfigSize); err != nil {
		return fmt.Errorf("machine %s: %w", m.ID(), err)
	}
	return nil
}

// writeSparse writes data into path (atomically, 0600: it may hold keys)
// and extends it with a hole to size bytes.
func writeSparse(path string, data []byte, size int64) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
