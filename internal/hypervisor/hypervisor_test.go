package hypervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/spec"
)

func TestNewAndCheck(t *testing.T) {
	// The tools are found through PATH: a directory with stand-ins for
	// both, and one with only one of them.
	both, one := t.TempDir(), t.TempDir()
	for _, f := range []string{filepath.Join(both, "qemu-system-x86_64"), filepath.Join(both, "qemu-img"), filepath.Join(one, "qemu-img")} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// xl as it answers on a host that is no dom0 (Debian's wrapper).
	noXen := t.TempDir()
	for name, body := range map[string]string{
		"qemu-img": "#!/bin/sh\n",
		"xl":       "#!/bin/sh\necho \"ERROR:  Can't find hypervisor information in sysfs!\" >&2\nexit 1\n",
	} {
		if err := os.WriteFile(filepath.Join(noXen, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, hypervisor, path string
		newErr, checkErr       string
	}{
		{"qemu installed", spec.HypervisorQEMU, both, "", ""},
		{"qemu missing", spec.HypervisorQEMU, one, "", "hypervisor: qemu: qemu-system-x86_64 not found on this host (apt-get install qemu-system-x86"},
		// No libvirtd answers on this socket: Check says to start one.
		{"libvirt without a daemon", spec.HypervisorLibvirt, both, "", "hypervisor: libvirt: cannot reach libvirtd at qemu:///system?socket=/nonexistent/libvirt-sock"},
		{"libvirt missing qemu", spec.HypervisorLibvirt, one, "", "hypervisor: libvirt: qemu-system-x86_64 not found"},
		{"xen without xl", spec.HypervisorXen, both, "", "hypervisor: xen: xl not found on this host (apt-get install xen-utils-4.17"},
		{"xen on a host that is no dom0", spec.HypervisorXen, noXen, "", "Can't find hypervisor information in sysfs!; this host must be a Xen dom0"},
		{"unknown", "vmware", both, `hypervisor: "vmware" is not one of libvirt, qemu, xen`, "is not one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			lab := &spec.Lab{Hypervisor: tc.hypervisor, Libvirt: spec.Libvirt{URI: "qemu:///system?socket=/nonexistent/libvirt-sock"}}
			d, err := New(lab, "")
			if tc.newErr == "" {
				if err != nil || d == nil || d.Name() != tc.hypervisor {
					t.Fatalf("New(%q) = %v, %v", tc.hypervisor, d, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.newErr) {
				t.Fatalf("New(%q) error %v, want %q", tc.hypervisor, err, tc.newErr)
			}
			err = Check(lab)
			if tc.checkErr == "" && err != nil {
				t.Fatalf("Check(%q): %v", tc.hypervisor, err)
			}
			if tc.checkErr != "" && (err == nil || !strings.Contains(err.Error(), tc.checkErr)) {
				t.Fatalf("Check(%q) error %v, want %q", tc.hypervisor, err, tc.checkErr)
			}
		})
	}
}

// Every hypervisor lab.yaml accepts is in the registry, and no other.
func TestRegistryMatchesSpec(t *testing.T) {
	for _, h := range []string{spec.HypervisorQEMU, spec.HypervisorLibvirt, spec.HypervisorXen} {
		if _, ok := registry[h]; !ok {
			t.Errorf("lab.yaml accepts hypervisor %q but the registry has no entry", h)
		}
	}
	if len(registry) != 3 {
		t.Errorf("registry has %v", Names())
	}
}
