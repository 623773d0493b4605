package spec

import (
	"fmt"
	"sort"
	"strings"
)

// Topologies `kubelab init` offers, each the shape of one of the setups
// kubelab automates.
var topologies = map[string]struct {
	about string
	nodes []templateNode
}{
	"default": {
		about: "one control plane with stacked etcd, two workers",
		nodes: []templateNode{
			{"cp1", "control-plane, etcd"},
			{"w1", "worker"},
			{"w2", "worker"},
		},
	},
	"xen-guide": {
		about: `the "Kubernetes and Xen" guide: one control plane, three external etcd nodes, workers`,
		nodes: []templateNode{
			{"master", "control-plane"},
			{"etcd1", "etcd"},
			{"etcd2", "etcd"},
			{"etcd3", "etcd"},
			{"node1", "worker"},
			{"node2", "worker"},
		},
	},
	"ha": {
		about: "Kubernetes The Hard Way's HA: three control planes with stacked etcd, workers",
		nodes: []templateNode{
			{"cp1", "control-plane, etcd"},
			{"cp2", "control-plane, etcd"},
			{"cp3", "control-plane, etcd"},
			{"w1", "worker"},
			{"w2", "worker"},
		},
	},
}

type templateNode struct{ name, roles string }

// Topologies lists the names `kubelab init --topology` accepts.
func Topologies() []string {
	names := make([]string, 0, len(topologies))
	for n := range topologies {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Template returns a commented lab.yaml for a topology. Every default is
// written out so the file documents itself.
func Template(topology string) ([]byte, error) {
	t, ok := topologies[topology]
	if !ok {
		return nil, fmt.Errorf("unknown topology %q; choose one of %s", topology, strings.Join(Topologies(), ", "))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# kubelab lab spec, written by "kubelab init --topology %s":
# %s.
# Every value below is the default; change what you need, delete what you don't.
apiVersion: %s
kind: %s
name: %s
hypervisor: %s             # qemu (KVM where it works, else software emulation) | libvirt | xen
# libvirt:
#   uri: qemu:///system          # with hypervisor: libvirt; this host's libvirtd (qemu:///session for a user, qemu+tcp://127.0.0.1/system, ...)
# xen:
#   disk: qcow2                  # with hypervisor: xen; qcow2 (an overlay, xl's qdisk backend) | raw (a full copy, blkback)

# The lab network on the host: a bridge, NAT, and host port forwards
#   ssh 80NN -> .NN:22, API 810k -> cluster k's API endpoint (its control plane,
#   or with two or more the virtual address .10k+9 that keepalived moves),
#   NodePorts 3k000-3k999 -> cluster k.
network:
  cidr: %s
  # gateway: 192.168.100.1       # the host's address on the bridge (default: first host)
  # failsafe: 192.168.100.254    # debug VM address (default: last host), ssh on host port 8000
  # bridge: kl-%s
  # namespace: kubelab           # put the whole lab network in this network namespace
  # dhcp: true                   # dnsmasq on the bridge gives each node its address by MAC
  # configServer: true           # serve each node's config over HTTP (port 80); Ignition nodes fetch it by URL

defaults:
  image: %s              # kubelab's own node image ("kubelab image build")
  cpus: %d
  memory: %s
  disk: %s
  provisioning: %s        # overlay (fastest, kubelab image) | cloud-init | ignition

# ssh public keys allowed on every node, besides the lab's own key.
# sshKeys:
#   - ~/.ssh/id_ed25519.pub

# Lifetimes of certificates issued from now on (kubelab certs renew re-issues).
# certificates:
#   caValidity: %s
#   leafValidity: %s

clusters:
  - name: k1
    index: 1               # owns .10-.19 of the lab network; cluster k owns .10k-.10k+9
    kubernetesVersion: %s
    podCIDR: %s   # one /24 per node, numbered by the node's address: .14 -> 172.16.14.0/24
    serviceCIDR: %s  # cluster DNS at .10
    podNetwork: %s       # routes (static routes, no daemon) | flannel (vxlan, config in etcd)
    # ipFamily: dual       # adds IPv6 (podCIDR6, serviceCIDR6, network.cidr6)
    # apiPort: 8101
    # nodePortRange: 31000-31999
    # butane: [extra.bu]   # Butane snippets merged into Ignition configs
    nodes:
`, topology, t.about, APIVersion, Kind, DefaultLabName, DefaultHypervisor, DefaultLabCIDR, DefaultLabName,
		DefaultImage, DefaultCPUs, DefaultMemory, DefaultDisk, DefaultProvisioning, DefaultCAValidity, DefaultLeafValidity,
		defaultKubernetesVersion(), DefaultPodCIDR, DefaultServiceCIDR, PodNetworkRoutes)
	for i, n := range t.nodes {
		fmt.Fprintf(&b, "      - name: %s\n        roles: [%s]\n", n.name, n.roles)
		if i == 0 {
			b.WriteString("        # address: 192.168.100.10  # default: next free address of the block\n")
			b.WriteString("        # mac: 00:16:3e:4e:31:10   # default: last byte = the address's last digits\n")
			b.WriteString("        # memory: 3GiB             # cpus, memory, disk, image, provisioning override defaults\n")
		}
	}
	return []byte(b.String()), nil
}
