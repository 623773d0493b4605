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
)

// TestIgnitionBoot: how a node provisioned by Ignition boots kubelab's
// image: the platform on the command line, and with the config server
// its URL (with the node's token) and how the initramfs gets an address;
// the hypervisor then hands the guest nothing. An image without Ignition
// gets none of it.
func TestIgnitionBoot(t *testing.T) {
	for _, tc := range []struct {
		name               string
		imageHasIgnition   bool
		configServer, dhcp bool
		want, notWant      []string
		kind               driver.ConfigKind
	}{
		{"fw_cfg", true, false, false, []string{"cloud-init=disabled", "ignition.platform.id=qemu"}, []string{"ignition.config.url", "ip="}, driver.ConfigIgnition},
		{"config server, static address", true, true, false,
			[]string{"cloud-init=disabled", "ignition.platform.id=metal", "ignition.config.url=http://192.168.100.1:80/k1/cp1/TOKEN/config.ign", "ip=192.168.100.10::192.168.100.1:255.255.255.0:cp1:eth0:off"},
			[]string{"platform.id=qemu", "ip=:::::eth0:dhcp"}, driver.ConfigNone},
		{"config server, DHCP", true, true, true,
			[]string{"ignition.platform.id=metal", "ignition.config.url=http://192.168.100.1:80/k1/cp1/TOKEN/config.ign", "ip=:::::eth0:dhcp"},
			[]string{"platform.id=qemu", "eth0:off"}, driver.ConfigNone},
		{"image without Ignition", false, true, false, []string{"cloud-init=disabled"}, []string{"ignition."}, driver.ConfigIgnition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, _ := templateEnv(t)
			prov := []string{image.ProvisionOverlay, image.ProvisionCloudInit}
			if tc.imageHasIgnition {
				prov = append(prov, image.ProvisionIgnition)
			}
			dir := filepath.Join(env.Layout.Images(), spec.DefaultImage)
			m := image.Manifest{Name: spec.DefaultImage, Kind: "kubelab", KernelCmdline: "root=LABEL=x rw",
				KernelCmdlineNoCloudInit: "cloud-init=disabled", Provisioning: prov,
				Artifacts: map[string]string{image.DiskFile: "d1", image.KernelFile: "k1", image.InitrdFile: "i1"}}
			data, _ := json.Marshal(m)
			if err := os.WriteFile(filepath.Join(dir, image.ManifestFile), data, 0o644); err != nil {
				t.Fatal(err)
			}
			env.Plan.Network.ConfigServer, env.Plan.Network.ConfigServerPort, env.Plan.Network.DHCP = tc.configServer, 80, tc.dhcp
			c := env.Plan.Clusters[0]
			n := c.Nodes[0]
			n.Provisioning = spec.ProvisionIgnition
			tokens, err := ServeTokens(env.Layout, env.Plan)
			if err != nil {
				t.Fatal(err)
			}
			mach, err := env.Machine(c, n)
			if err != nil {
				t.Fatal(err)
			}
			if n.Name != "cp1" || n.Address.String() != "192.168.100.10" {
				t.Fatalf("test bug: first node %s at %s", n.Name, n.Address)
			}
			for _, w := range tc.want {
				w = strings.ReplaceAll(w, "TOKEN", tokens["k1/cp1"])
				if !strings.Contains(mach.Cmdline, w) {
					t.Errorf("command line %q lacks %q", mach.Cmdline, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(mach.Cmdline, w) {
					t.Errorf("command line %q has %q", mach.Cmdline, w)
				}
			}
			if mach.Config.Kind != tc.kind {
				t.Errorf("config handed by the hypervisor: %q, want %q", mach.Config.Kind, tc.kind)
			}
			if tc.configServer && len(tokens["k1/cp1"]) < 20 {
				t.Errorf("token %q too short", tokens["k1/cp1"])
			}
		})
	}
}

// TestRefreshIgnitionInPlace: refresh keeps a running Ignition node's disk
// (first-boot flag, machine id, power cycle, config served again), as the
// Xen guide does; a stopped one, or one provisioned otherwise, gets a
// fresh disk.
func TestRefreshIgnitionInPlace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		prov  string
		state driver.State
		want  string
	}{
		{"running ignition node", spec.ProvisionIgnition, driver.StateRunning, "render firstboot stop serve boot etcd apiserver"},
		{"stopped ignition node", spec.ProvisionIgnition, driver.StateStopped, "render stop reprovision boot etcd apiserver"},
		{"running overlay node", spec.ProvisionOverlay, driver.StateRunning, "render stop reprovision boot etcd apiserver"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, d := templateEnv(t)
			dir := filepath.Join(env.Layout.Images(), spec.DefaultImage)
			m := image.Manifest{Name: spec.DefaultImage, Kind: "kubelab", KernelCmdline: "root=LABEL=x rw",
				Provisioning: []string{image.ProvisionOverlay, image.ProvisionCloudInit, image.ProvisionIgnition},
				Artifacts:    map[string]string{image.DiskFile: "d1", image.KernelFile: "k1", image.InitrdFile: "i1"}}
			data, _ := json.Marshal(m)
			if err := os.WriteFile(filepath.Join(dir, image.ManifestFile), data, 0o644); err != nil {
				t.Fatal(err)
			}
			for i := range env.Plan.Clusters[0].Nodes {
				env.Plan.Clusters[0].Nodes[i].Provisioning = tc.prov
			}
			d.state = tc.state
			env.Driver = reprovisioningDriver{d}
			phases, err := env.RefreshPhases(context.Background(), "cp1")
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range phases {
				names = append(names, p.Name)
			}
			if got := strings.Join(names, " "); got != tc.want {
				t.Errorf("phases %q, want %q", got, tc.want)
			}
		})
	}
}

// reprovisioningDriver adds driver.Reprovisioner to templatingDriver.
type reprovisioningDriver struct{ *templatingDriver }

func (d reprovisioningDriver) Reprovision(_ context.Context, m driver.Machine) error {
	d.record("reprovision " + m.Name)
	return nil
}
