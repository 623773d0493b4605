// Package hypervisor is the one place that turns a lab's `hypervisor:` into
// a driver, and checks that this host can run it. The lifecycle and the CLI
// only ever see the driver.Driver it returns.
package hypervisor

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/libvirt"
	"github.com/kubelab/kubelab/internal/driver/qemu"
	"github.com/kubelab/kubelab/internal/driver/xen"
	"github.com/kubelab/kubelab/internal/spec"
)

// entry is one hypervisor: how to make its driver and what it needs on the
// host. A hypervisor lab.yaml knows but kubelab has no driver for yet has
// only a note.
type entry struct {
	newDriver func(l *spec.Lab, probeKernel string) driver.Driver
	// tools are the programs the driver runs, with the Debian packages
	// that bring them.
	tools   map[string]string
	missing string
}

var qemuTools = map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"}

var registry = map[string]entry{
	spec.HypervisorQEMU: {
		newDriver: func(_ *spec.Lab, k string) driver.Driver { return qemu.New(qemu.Options{ProbeKernel: k}) },
		tools:     qemuTools,
	},
	spec.HypervisorLibvirt: {
		newDriver: func(l *spec.Lab, k string) driver.Driver {
			return libvirt.New(libvirt.Options{URI: l.Libvirt.URI, ProbeKernel: k})
		},
		// libvirtd runs QEMU; kubelab makes the disks itself.
		tools: qemuTools,
	},
	spec.HypervisorXen: {
		newDriver: func(l *spec.Lab, _ string) driver.Driver { return xen.New(xen.Options{DiskFormat: l.Xen.Disk}) },
		// xl is Xen's toolstack in dom0; kubelab makes the disks itself.
		tools: map[string]string{"xl": "xen-utils-4.17", "qemu-img": "qemu-utils"},
	},
}

// daemonChecker is a driver that depends on a daemon it can check.
type daemonChecker interface {
	CheckDaemon() error
}

// New returns the driver for the lab's hypervisor. It does not look at
// the host: commands that only read or remove a lab work without it.
// probeKernel is a Linux kernel the driver boots to learn whether KVM
// really works here (the lab's image kernel; it may not exist yet).
func New(l *spec.Lab, probeKernel string) (driver.Driver, error) {
	e, ok := registry[l.Hypervisor]
	if !ok {
		return nil, fmt.Errorf("hypervisor: %q is not one of %s", l.Hypervisor, strings.Join(Names(), ", "))
	}
	if e.newDriver == nil {
		return nil, fmt.Errorf("hypervisor: %s: %s; use hypervisor: %s", l.Hypervisor, e.missing, spec.HypervisorQEMU)
	}
	return e.newDriver(l, probeKernel), nil
}

// Check reports what this host lacks to run machines under the lab's
// hypervisor, naming the lab.yaml field and what to install or start.
func Check(l *spec.Lab) error {
	d, err := New(l, "")
	if err != nil {
		return err
	}
	name := l.Hypervisor
	var missing, packages []string
	for _, tool := range sortedKeys(registry[name].tools) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
			packages = append(packages, registry[name].tools[tool])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("hypervisor: %s: %s not found on this host (apt-get install %s, or run hack/install-deps.sh)",
			name, strings.Join(missing, " and "), strings.Join(packages, " "))
	}
	if dc, ok := d.(daemonChecker); ok {
		if err := dc.CheckDaemon(); err != nil {
			return fmt.Errorf("hypervisor: %w", err) // the error names the driver
		}
	}
	return nil
}

// Names lists the hypervisors lab.yaml accepts.
func Names() []string { return sortedKeys(registry) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
