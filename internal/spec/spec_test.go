package spec

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// validLab is a lab with two clusters that passes validation; the bad-input
// cases below each break one thing in it.
const validLab = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: test
sshKeys: [id.pub]
clusters:
  - name: k1
    nodes:
      - name: cp1
        roles: [control-plane, etcd]
      - name: w1
        roles: [worker]
  - name: k2
    index: 2
    podNetwork: flannel
    nodes:
      - name: m2
        roles: [control-plane]
      - name: e1
        roles: [etcd]
      - name: w2
        roles: [worker]
        address: 192.168.100.25
`

// writeKey puts a freshly generated ssh public key at dir/id.pub.
func writeKey(t *testing.T, dir string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "id.pub"), ssh.MarshalAuthorizedKey(sshPub), 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadString(t *testing.T, yaml string) (*Lab, []Warning, error) {
	t.Helper()
	dir := t.TempDir()
	writeKey(t, dir)
	path := filepath.Join(dir, "lab.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

func TestValidLabLoads(t *testing.T) {
	lab, warnings, err := loadString(t, validLab)
	if err != nil {
		t.Fatalf("valid lab rejected: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("unexpected warnings: %v", warnings)
	}
	if got := lab.Clusters[0].Index; got != 1 {
		t.Errorf("k1 index defaulted to %d, want 1", got)
	}
	if got := lab.Clusters[1].APIPort; got != 8102 {
		t.Errorf("k2 apiPort defaulted to %d, want 8102", got)
	}
	if got := lab.Clusters[1].NodePortRange; got != "32000-32999" {
		t.Errorf("k2 nodePortRange defaulted to %q, want 32000-32999", got)
	}
	if got := lab.Clusters[0].Nodes[1].Memory; got != DefaultMemory {
		t.Errorf("node memory defaulted to %q, want %q", got, DefaultMemory)
	}
}

func TestTemplatesLoad(t *testing.T) {
	for _, topo := range Topologies() {
		t.Run(topo, func(t *testing.T) {
			data, err := Template(topo)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := loadString(t, string(data)); err != nil {
				t.Fatalf("template %s does not load: %v", topo, err)
			}
		})
	}
	if _, err := Template("nope"); err == nil || !strings.Contains(err.Error(), "default, ha, xen-guide") {
		t.Errorf("unknown topology error = %v, want the list of topologies", err)
	}
}

// TestBadInput covers each class of bad input: the error must name the exact
// field path and say what is wrong.
func TestBadInput(t *testing.T) {
	cases := []struct {
		name    string
		old     string // replaced in validLab
		new     string
		path    string // expected field path in the message
		message string // expected fragment of the message
	}{
		{"unknown field", "    index: 2\n", "    index: 2\n    foo: bar\n", "clusters[1].foo", `unknown field "foo"`},
		{"misspelled field", "        address: 192.168.100.25", "        adress: 192.168.100.25", "clusters[1].nodes[2].adress", `did you mean "address"`},
		{"misspelled top-level", "sshKeys:", "sshkeys:", "sshkeys", `did you mean "sshKeys"`},
		{"wrong type", "    index: 2\n", "    index: two\n", "clusters[1].index", "whole number"},
		{"list expected", "roles: [worker]\n        address", "roles: worker\n        address", "clusters[1].nodes[2].roles", "expected a list"},
		{"duplicate cluster name", "  - name: k2", "  - name: k1", "clusters[1].name", "already defined at clusters[0]"},
		{"duplicate node name", "      - name: w2", "      - name: w1", "clusters[1].nodes[2].name", "already defined at clusters[0].nodes[1]"},
		{"bad node name", "      - name: w2", "      - name: W_2", "clusters[1].nodes[2].name", "not a valid name"},
		{"unknown role", "roles: [etcd]", "roles: [etc]", "clusters[1].nodes[1].roles[0]", `"etc" is not valid; use one of etcd, control-plane, worker`},
		{"no roles", "roles: [etcd]", "roles: []", "clusters[1].nodes[1].roles", "no roles"},
		{"no control plane", "roles: [control-plane]", "roles: [worker]", "clusters[1].nodes", "no control-plane node"},
		{"no etcd", "roles: [etcd]", "roles: [worker]", "clusters[1].nodes", "no etcd member"},
		{"no nodes", "    nodes:\n      - name: cp1\n        roles: [control-plane, etcd]\n      - name: w1\n        roles: [worker]\n", "    nodes: []\n", "clusters[0].nodes", "has no nodes"},
		{"no clusters", "clusters:\n", "clusters: []\nx:\n", "x", "unknown field"},
		{"block index out of range", "    index: 2\n", "    index: 10\n", "clusters[1].index", "must be 1..9"},
		{"block index collision", "  - name: k1\n", "  - name: k1\n    index: 2\n", "clusters[1].index", "already used by clusters[0]"},
		{"malformed lab cidr", "sshKeys:", "network: {cidr: 192.168.300.0/24}\nsshKeys:", "network.cidr", "not a CIDR"},
		{"lab cidr host bits", "sshKeys:", "network: {cidr: 192.168.100.5/24}\nsshKeys:", "network.cidr", "did you mean 192.168.100.0/24"},
		{"lab cidr too small", "sshKeys:", "network: {cidr: 192.168.100.0/26}\nsshKeys:", "network.cidr", "too small"},
		{"leaf validity unparsable", "sshKeys:", "certificates: {leafValidity: 1year}\nsshKeys:", "certificates.leafValidity", "not a duration"},
		{"ca validity too short", "sshKeys:", "certificates: {caValidity: 10m}\nsshKeys:", "certificates.caValidity", "between 1h and 36500d"},
		{"leaf outlives ca", "sshKeys:", "certificates: {caValidity: 30d, leafValidity: 31d}\nsshKeys:", "certificates.leafValidity", "cannot outlive its CA"},
		{"gateway outside", "sshKeys:", "network: {gateway: 10.0.0.1}\nsshKeys:", "network.gateway", "outside the lab network"},
		{"malformed pod cidr", "    podNetwork: flannel\n", "    podNetwork: flannel\n    podCIDR: 172.16.0.0/33\n", "clusters[1].podCIDR", "not a CIDR"},
		{"pod overlaps service", "    podNetwork: flannel\n", "    podNetwork: flannel\n    serviceCIDR: 172.16.128.0/17\n", "clusters[1].serviceCIDR", "overlaps clusters[1].podCIDR"},
		{"pod overlaps lab", "    podNetwork: flannel\n", "    podNetwork: flannel\n    podCIDR: 192.168.0.0/16\n", "clusters[1].podCIDR", "overlaps network.cidr"},
		{"bad pod network", "podNetwork: flannel", "podNetwork: calico", "clusters[1].podNetwork", "use one of routes, flannel"},
		{"bad provisioning", "podNetwork: flannel", "podNetwork: flannel\n    provisioning: pxe", "clusters[1].provisioning", "use one of overlay, cloud-init, ignition"},
		{"malformed version", "    index: 2\n", "    index: 2\n    kubernetesVersion: 1.37\n", "clusters[1].kubernetesVersion", "write it like v1.37.2"},
		{"malformed memory", "        address: 192.168.100.25", "        address: 192.168.100.25\n        memory: lots", "clusters[1].nodes[2].memory", "not a size"},
		{"too little memory", "        address: 192.168.100.25", "        address: 192.168.100.25\n        memory: 64MiB", "clusters[1].nodes[2].memory", "at least 256MiB"},
		{"malformed disk", "        address: 192.168.100.25", "        address: 192.168.100.25\n        disk: 20X", "clusters[1].nodes[2].disk", "not a size"},
		{"cpus out of range", "        address: 192.168.100.25", "        address: 192.168.100.25\n        cpus: 0\n        memory: 1GiB", "", ""}, // 0 means default: valid
		{"negative cpus", "        address: 192.168.100.25", "        address: 192.168.100.25\n        cpus: -2", "clusters[1].nodes[2].cpus", "must be 1..64"},
		{"malformed address", "address: 192.168.100.25", "address: 192.168.100", "clusters[1].nodes[2].address", "not an IPv4 address"},
		{"malformed mac", "        address: 192.168.100.25", "        address: 192.168.100.25\n        mac: 00:16:3e:zz:00:01", "clusters[1].nodes[2].mac", "not a MAC address"},
		{"multicast mac", "        address: 192.168.100.25", "        address: 192.168.100.25\n        mac: 01:16:3e:00:00:01", "clusters[1].nodes[2].mac", "multicast"},
		{"missing ssh key", "sshKeys: [id.pub]", "sshKeys: [id.pub, nope.pub]", "sshKeys[1]", "no such file"},
		{"missing butane", "podNetwork: flannel", "podNetwork: flannel\n    butane: [extra.bu]", "clusters[1].butane[0]", "no such file"},
		{"bad node port range", "podNetwork: flannel", "podNetwork: flannel\n    nodePortRange: 32999-32000", "clusters[1].nodePortRange", "first not above the last"},
		{"wrong apiVersion", "apiVersion: kubelab.dev/v1alpha1", "apiVersion: v1", "apiVersion", "this kubelab reads"},
		{"dual without cidr6 values", "podNetwork: flannel", "podNetwork: flannel\n    podCIDR6: fd00::/56", "clusters[1].ipFamily", "set ipFamily: dual"},
		{"libvirt uri without libvirt", "sshKeys:", "libvirt: {uri: qemu:///system}\nsshKeys:", "libvirt.uri", `hypervisor is "qemu"`},
		{"libvirt ssh", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: 'qemu+ssh://root@lab-host:2222/system?keyfile=/k'}\nsshKeys:", "", ""},
		{"libvirt tcp", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: 'qemu+tcp://127.0.0.1:16509/system'}\nsshKeys:", "", ""},
		{"libvirt tcp without host", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: 'qemu+tcp:///system'}\nsshKeys:", "libvirt.uri", "needs a host"},
		{"libvirt unix with host", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: 'qemu+unix://h/system'}\nsshKeys:", "libvirt.uri", "takes no host"},
		{"libvirt unknown transport", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: 'qemu+ext:///system'}\nsshKeys:", "libvirt.uri", `transport "ext" is not supported`},
		{"libvirt other driver", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: lxc:///system}\nsshKeys:", "libvirt.uri", `driver "lxc" is not supported`},
		{"libvirt bad path", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: qemu:///sys}\nsshKeys:", "libvirt.uri", "neither /system nor /session"},
		{"libvirt session", "sshKeys:", "hypervisor: libvirt\nlibvirt: {uri: qemu:///session}\nsshKeys:", "", ""},
		{"xen raw", "sshKeys:", "hypervisor: xen\nxen: {disk: raw}\nsshKeys:", "", ""},
		{"xen disk format", "sshKeys:", "hypervisor: xen\nxen: {disk: vmdk}\nsshKeys:", "xen.disk", `"vmdk"`},
		{"xen disk without xen", "sshKeys:", "xen: {disk: raw}\nsshKeys:", "xen.disk", `hypervisor is "qemu"`},
		{"xen in a namespace", "sshKeys:", "hypervisor: xen\nnetwork: {namespace: lab}\nsshKeys:", "network.namespace", "vif-bridge"},
		{"xen ignition", "sshKeys:", "hypervisor: xen\ndefaults: {provisioning: ignition}\nsshKeys:", "clusters[0].nodes[0].provisioning", "set network.configServer: true"},
		{"duplicate key", "    index: 2\n", "    index: 2\n    index: 3\n", "clusters[1].index", "field given twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(validLab, tc.old) {
				t.Fatalf("test bug: %q not in validLab", tc.old)
			}
			_, _, err := loadString(t, strings.Replace(validLab, tc.old, tc.new, 1))
			if tc.path == "" && tc.message == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want an error at %s", tc.path)
			}
			msg := err.Error()
			if tc.path != "" && !strings.Contains(msg, tc.path+":") && !strings.Contains(msg, tc.path+" (line") {
				t.Errorf("error does not name %s:\n%s", tc.path, msg)
			}
			if !strings.Contains(msg, tc.message) {
				t.Errorf("error lacks %q:\n%s", tc.message, msg)
			}
		})
	}
}

func TestEvenEtcdWarns(t *testing.T) {
	yaml := strings.Replace(validLab, "roles: [control-plane]", "roles: [control-plane, etcd]", 1)
	_, warnings, err := loadString(t, yaml)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || warnings[0].Path != "clusters[1].nodes" || !strings.Contains(warnings[0].Msg, "2 etcd members") {
		t.Fatalf("warnings = %v, want one about 2 etcd members at clusters[1].nodes", warnings)
	}
}

func TestAllErrorsReportedAtOnce(t *testing.T) {
	yaml := strings.Replace(validLab, "    index: 2\n", "    index: 12\n    podNetwork: x\n", 1)
	yaml = strings.Replace(yaml, "    podNetwork: flannel\n", "", 1)
	_, _, err := loadString(t, yaml)
	es, ok := asErrors(err)
	if !ok || len(es) < 2 {
		t.Fatalf("want several errors at once, got %v", err)
	}
}

func asErrors(err error) (Errors, bool) {
	for err != nil {
		if es, ok := err.(Errors); ok {
			return es, true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return nil, false
		}
		err = u.Unwrap()
	}
	return nil, false
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"365d", 365 * 24 * time.Hour, true}, {"8760h", 8760 * time.Hour, true}, {"90m", 90 * time.Minute, true},
		{"0d", 0, true}, {"-1d", 0, false}, {"1.5d", 0, false}, {"d", 0, false}, {"", 0, false},
		{"99999999999999d", 0, false}, {"1y", 0, false},
	}
	for _, tc := range cases {
		got, err := ParseDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"512MiB", 512 << 20, true}, {"2Gi", 2 << 30, true}, {"2G", 2e9, true},
		{"1024", 1024, true}, {"20 GiB", 20 << 30, true}, {"", 0, false}, {"-1G", 0, false},
		{"1.5G", 0, false}, {"GiB", 0, false}, {"99999999999999999999", 0, false}, {"18446744073709551615Ti", 0, false},
	}
	for _, tc := range cases {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
