package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// Node templates: kubelab's image booted once with no configuration and
// saved while it waits for one (see driver.Templater). A node made from a
// template resumes that saved guest and applies its own configuration, so
// `up` pays no kernel and systemd boot per node. A template belongs to one
// image and one node shape (CPUs, memory, disk, kernel command line) under
// one hypervisor version and accelerator; it lives beside its image in the
// lab (images/<image>/templates/<key>), kept like the image.

// templateFormat changes when what a template holds changes in a way its
// key does not show.
const templateFormat = "kubelab-template/1"

// templateMAC is the template's NIC address until a node sets its own: a
// locally administered one, never on any network (the template's NIC is
// connected to nothing).
const templateMAC = "02:00:00:00:00:01"

// templateMachine is the template node m (of the given image) would start
// from, and whether it can start from one at all: only overlay-provisioned
// nodes of an image that supports it, on a driver that makes templates,
// unless templates are turned off.
func (e *Env) templateMachine(m driver.Machine, n plan.Node, manifest image.Manifest) (driver.Machine, bool) {
	td, ok := e.Driver.(driver.Templater)
	if !ok || e.NoTemplates || n.Provisioning != spec.ProvisionOverlay || manifest.KernelCmdlineTemplate == "" || m.Kernel == "" {
		return driver.Machine{}, false
	}
	compat, err := e.templateCompat(td)
	if err != nil {
		return driver.Machine{}, false
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", templateFormat, compat)
	for _, f := range []string{image.DiskFile, image.KernelFile, image.InitrdFile} {
		fmt.Fprintf(h, "%s %s\n", f, manifest.Artifacts[f])
	}
	fmt.Fprintf(h, "cmdline %s\ncpus %d\nmemory %d\ndisk %d\n", m.Cmdline, m.CPUs, m.MemoryMiB, m.DiskGiB)
	key := hex.EncodeToString(h.Sum(nil))[:16]
	t := driver.Machine{
		Lab:       m.Lab,
		Name:      "template-" + key,
		Dir:       filepath.Join(e.Layout.Images(), n.Image, "templates", key),
		CPUs:      m.CPUs,
		MemoryMiB: m.MemoryMiB,
		DiskGiB:   m.DiskGiB,
		BaseImage: m.BaseImage,
		Kernel:    m.Kernel,
		Initrd:    m.Initrd,
		Cmdline:   strings.TrimSpace(m.Cmdline + " " + manifest.KernelCmdlineTemplate),
		MAC:       templateMAC,
		Config:    driver.Config{Kind: driver.ConfigOverlay},
	}
	return t, true
}

// templateCompat is the driver's compatibility string, asked once (it runs
// the hypervisor to learn its version).
func (e *Env) templateCompat(td driver.Templater) (string, error) {
	e.compatOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.compat, e.compatErr = td.StateCompatibility(ctx)
	})
	return e.compat, e.compatErr
}

// templatesToMake are the templates that new nodes would start from and
// that are not made yet, by directory, with the nodes that would use each.
func (e *Env) templatesToMake(ctx context.Context, cls []plan.Cluster) (wanted map[string]driver.Machine, users map[string][]string) {
	wanted, users = map[string]driver.Machine{}, map[string][]string{}
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, t := e.machine(c, n)
			if t == nil || m.Template != "" {
				continue // boots, or its template is made
			}
			if st, err := e.Driver.State(ctx, m); err != nil || st != driver.StateAbsent {
				continue // created already: it boots from its own disk
			}
			wanted[t.Dir] = *t
			users[t.Dir] = append(users[t.Dir], n.Name)
		}
	}
	return wanted, users
}

// makeTemplates makes the templates that nodes about to be created will
// start from, as many at once as the host has cores (each is one boot,
// mostly one busy vCPU).
func (e *Env) makeTemplates(ctx context.Context, cls []plan.Cluster) error {
	td, ok := e.Driver.(driver.Templater)
	if !ok {
		return nil
	}
	wanted, users := e.templatesToMake(ctx, cls)
	dirs := make([]string, 0, len(wanted))
	for d := range wanted {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	var mu sync.Mutex
	var errs []error
	for _, d := range dirs {
		t := wanted[d]
		g.Go(func() error {
			subject := t.Name
			e.Progress.Status(subject, fmt.Sprintf("booting the image once for %s (%d CPU, %d MiB)", strings.Join(users[d], ", "), t.CPUs, t.MemoryMiB))
			start := time.Now()
			if err := td.MakeTemplate(ctx, t, versions.TemplateMarker); err != nil {
				e.Progress.Final(subject, "failed")
				mu.Lock()
				errs = append(errs, fmt.Errorf("make the node template in %s (turn templates off with --no-template): %w", t.Dir, err))
				mu.Unlock()
				return nil
			}
			e.Progress.Final(subject, fmt.Sprintf("saved in %s (%s)", time.Since(start).Round(time.Second), t.Dir))
			return nil
		})
	}
	g.Wait()
	return errors.Join(errs...)
}
