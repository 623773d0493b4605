package libvirt

import (
	"flag"
	"path/filepath"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func baseMachine() driver.Machine {
	return driver.Machine{
		Lab: "lab", Name: "c1-worker-1", Dir: "/var/lib/kubelab/lab/clusters/c1/nodes/worker-1",
		CPUs: 2, MemoryMiB: 2048, DiskGiB: 20,
		BaseImage: "/var/lib/kubelab/lab/images/kubelab/disk.qcow2",
		Kernel:    "/var/lib/kubelab/lab/images/kubelab/vmlinuz",
		Initrd:    "/var/lib/kubelab/lab/images/kubelab/initrd.img",
		Cmdline:   "root=/dev/vda rw console=ttyS0",
		MAC:       "00:16:3e:4e:31:12", Tap: "kl-lab-12", Netns: "kubelab-lab",
	}
}

// TestDomainXMLGolden pins the domain definition per domain type and
// config kind (the generated domain.xml). Refresh with -update.
func TestDomainXMLGolden(t *testing.T) {
	cases := []struct {
		name, typ string
		edit      func(*driver.Machine)
	}{
		{"overlay-qemu", TypeQEMU, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/overlay.tar"}
		}},
		{"overlay-kvm", TypeKVM, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigOverlay, Path: m.Dir + "/overlay.tar"}
		}},
		{"cloudinit-dir", TypeQEMU, func(m *driver.Machine) {
			m.Config = driver.Config{Kind: driver.ConfigCloudInit, Path: m.Dir + "/cloud-init"}
		}},
		{"ignition-diskboot", TypeQEMU, func(m *driver.Machine) {
			m.Kernel, m.Initrd, m.Cmdline = "", "", ""
			m.Config = driver.Config{Kind: driver.ConfigIgnition, Path: m.Dir + "/ignition.json"}
		}},
		{"no-net-no-config", TypeQEMU, func(m *driver.Machine) {
			m.Tap, m.MAC, m.Netns = "", "", ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := baseMachine()
			c.edit(&m)
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			got, err := DomainXML(m, c.typ, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			// libvirtxml reads back what it wrote.
			var dom libvirtxml.Domain
			if err := dom.Unmarshal(got); err != nil {
				t.Fatalf("the XML does not parse: %v", err)
			}
			if dom.Name != m.ID() || dom.Type != c.typ || dom.UUID == "" {
				t.Errorf("name %q type %q uuid %q", dom.Name, dom.Type, dom.UUID)
			}
			drivertest.Golden(t, filepath.Join("testdata", c.name+".xml"), got, *update)
		})
	}
}

// The UUID names the machine in its directory: stable across definitions,
// different for another lab directory or node.
func TestDomainUUID(t *testing.T) {
	m := baseMachine()
	a := domainUUID(m)
	if a != domainUUID(m) {
		t.Fatal("UUID not stable")
	}
	other := m
	other.Dir += "x"
	renamed := m
	renamed.Name = "c1-worker-2"
	if domainUUID(other) == a || domainUUID(renamed) == a {
		t.Error("UUID does not depend on the directory and name")
	}
	if len(a) != 36 || a[14] != '5' || !strings.ContainsAny(a[19:20], "89ab") {
		t.Errorf("UUID %s is not an RFC 4122 version 5 layout", a)
	}
}
