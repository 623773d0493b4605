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
	"github.com/kubelab/kubelab/internal/driver/qemu"
	"github.com/kubelab/kubelab/internal/spec"
)

// entry is one hypervisor: how to make its driver and what it needs on the
// host. A hypervisor lab.yaml knows but kubelab has no driver for yet has
// only a note.
type entry struct {
	newDriver func() driver.Driver
	// tools are the programs the driver runs, with the Debian packages
	// that bring them.
	tools   map[string]string
	missing string
}

var registry = map[string]entry{
	spec.HypervisorQEMU: {
		newDriver: func() driver.Driver { return qemu.New(qemu.Options{}) },
		tools:     map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"},
	},
	spec.HypervisorLibvirt: {missing: "this kubelab has no libvirt driver yet"},
	spec.HypervisorXen:     {missing: "this kubelab has no Xen driver yet"},
}

// New returns the driver for the named hypervisor. It does not look at the
// host: commands that only read or remove a lab work without it.
func New(name string) (driver.Driver, error) {
	e, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("hypervisor: %q is not one of %s", name, strings.Join(Names(), ", "))
	}
	if e.newDriver == nil {
		return nil, fmt.Errorf("hypervisor: %s: %s; use hypervisor: %s", name, e.missing, spec.HypervisorQEMU)
	}
	return e.newDriver(), nil
}

// Check reports what this host lacks to run machines under the named
// hypervisor, naming the lab.yaml field and what to install.
func Check(name string) error {
	if _, err := New(name); err != nil {
		return err
	}
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
