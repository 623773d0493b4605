// Package rendertest holds the hand-made node descriptions the renderer
// tests share: a control-plane node with stacked etcd and a worker. It is
// imported by tests only.
package rendertest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/netip"

	"golang.org/x/crypto/ssh"

	"github.com/kubelab/kubelab/internal/nodeconfig"
)

// PlaceholderHostKeys stand in for host keys in golden files, which must not
// hold real private keys and must not change from run to run.
func PlaceholderHostKeys() []nodeconfig.File {
	return []nodeconfig.File{
		{Path: "/etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Owner: "root", Group: "root", Secret: true,
			Contents: []byte("-----BEGIN PLACEHOLDER-----\nTEST PLACEHOLDER, NOT A KEY\n-----END PLACEHOLDER-----\n")},
		{Path: "/etc/ssh/ssh_host_ed25519_key.pub", Mode: 0o644, Owner: "root", Group: "root",
			Contents: []byte("ssh-ed25519 AAAAPLACEHOLDER root@test\n")},
	}
}

// GenerateHostKeys makes a real ed25519 host key pair, at test time.
func GenerateHostKeys() ([]nodeconfig.File, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("marshal ed25519 host key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ed25519 public key: %w", err)
	}
	return []nodeconfig.File{
		{Path: "/etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Owner: "root", Group: "root", Secret: true,
			Contents: pem.EncodeToMemory(block)},
		{Path: "/etc/ssh/ssh_host_ed25519_key.pub", Mode: 0o644, Owner: "root", Group: "root",
			Contents: ssh.MarshalAuthorizedKey(sshPub)},
	}, nil
}

var rootKeys = []string{
	"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubelabTestKeyOneNotARealKeyxxxxxxxxxxxxx admin@host",
	"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubelabTestKeyTwoNotARealKeyxxxxxxxxxxxxx ci@host",
}

// ControlPlane is node k1-cp1: control plane with stacked etcd, routes
// pod network mode.
func ControlPlane(hostKeys []nodeconfig.File) nodeconfig.Node {
	return nodeconfig.Node{
		Name: "cp1", Cluster: "k1", Hostname: "k1-cp1", Source: "lab.yaml cluster k1 node cp1",
		Network: nodeconfig.Network{
			Interface: "eth0", MAC: "00:16:3e:4e:31:01",
			Addresses: []netip.Prefix{netip.MustParsePrefix("192.168.100.101/24")},
			Gateway:   netip.MustParseAddr("192.168.100.1"),
			DNS:       []netip.Addr{netip.MustParseAddr("192.168.100.1")},
			Routes: []nodeconfig.Route{
				{To: netip.MustParsePrefix("172.16.2.0/24"), Via: netip.MustParseAddr("192.168.100.104")},
				{To: netip.MustParsePrefix("172.16.3.0/24"), Via: netip.MustParseAddr("192.168.100.105")},
			},
		},
		Users: []nodeconfig.User{{Name: "root", SSHAuthorizedKeys: rootKeys}},
		Files: []nodeconfig.File{
			{Path: "/etc/kubernetes/pki/ca.crt", Mode: 0o644, Owner: "root", Group: "root",
				Contents: []byte("-----BEGIN CERTIFICATE-----\nTEST PLACEHOLDER CA\n-----END CERTIFICATE-----\n")},
			{Path: "/etc/kubernetes/pki/apiserver.key", Mode: 0o600, Owner: "root", Group: "root", Secret: true,
				Contents: []byte("-----BEGIN PLACEHOLDER-----\nTEST PLACEHOLDER, NOT A KEY\n-----END PLACEHOLDER-----\n")},
			{Path: "/etc/etcd/pki/peer.key", Mode: 0o600, Owner: "etcd", Group: "etcd", Secret: true,
				Contents: []byte("-----BEGIN PLACEHOLDER-----\nTEST PLACEHOLDER PEER, NOT A KEY\n-----END PLACEHOLDER-----\n")},
			{Path: "/usr/local/lib/kubelab/hello.sh", Mode: 0o755, Owner: "root", Group: "root",
				Contents: []byte("#!/bin/sh\n# a script with 'quotes', \"double quotes\", % and unicode: ✓\necho hello\n")},
		},
		Units: []nodeconfig.Unit{
			{Name: "etcd.service", Contents: "[Unit]\nDescription=etcd\n\n[Service]\nExecStart=/usr/local/bin/etcd --name cp1\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"},
			{Name: "kube-apiserver.service", Contents: "[Unit]\nDescription=Kubernetes API server\nAfter=etcd.service\n\n[Service]\nExecStart=/usr/local/bin/kube-apiserver --anonymous-auth=false\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"},
			{Name: "kube-apiserver.service", DropIn: "10-limits.conf", Contents: "[Service]\nLimitNOFILE=65536\n"},
			{Name: "containerd.service", DropIn: "10-kubelab.conf", Contents: "[Service]\nEnvironment=KUBELAB=1\n"},
		},
		Sysctls:     []nodeconfig.Sysctl{{Key: "net.ipv4.ip_forward", Value: "1"}, {Key: "net.bridge.bridge-nf-call-iptables", Value: "1"}},
		Modules:     []string{"br_netfilter", "overlay"},
		SSHHostKeys: hostKeys,
		Enable:      []string{"containerd.service", "etcd.service", "kube-apiserver.service"},
		Mask:        []string{"systemd-timesyncd.service"},
	}
}

// Worker is node k1-w1: a worker, no masks.
func Worker(hostKeys []nodeconfig.File) nodeconfig.Node {
	return nodeconfig.Node{
		Name: "w1", Cluster: "k1", Hostname: "k1-w1", Source: "lab.yaml cluster k1 node w1",
		Network: nodeconfig.Network{
			Interface: "eth0", MAC: "00:16:3e:4e:31:04",
			Addresses: []netip.Prefix{netip.MustParsePrefix("192.168.100.104/24")},
			Gateway:   netip.MustParseAddr("192.168.100.1"),
			DNS:       []netip.Addr{netip.MustParseAddr("192.168.100.1"), netip.MustParseAddr("192.168.100.2")},
			Routes: []nodeconfig.Route{
				{To: netip.MustParsePrefix("172.16.1.0/24"), Via: netip.MustParseAddr("192.168.100.101")},
			},
		},
		Users: []nodeconfig.User{
			{Name: "root", SSHAuthorizedKeys: rootKeys[:1]},
		},
		Files: []nodeconfig.File{
			{Path: "/var/lib/kubelet/kubeconfig", Mode: 0o600, Owner: "root", Group: "root", Secret: true,
				Contents: []byte("apiVersion: v1\nkind: Config\nusers:\n- name: node\n  user:\n    client-key-data: UExBQ0VIT0xERVI=\n")},
			{Path: "/etc/containerd/config.toml", Mode: 0o644,
				Contents: []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n")},
		},
		Units: []nodeconfig.Unit{
			{Name: "kubelet.service", Contents: "[Unit]\nDescription=kubelet\nAfter=containerd.service\n\n[Service]\nExecStart=/usr/local/bin/kubelet\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"},
			{Name: "kubelet.service", DropIn: "10-args.conf", Contents: "[Service]\nEnvironment=KUBELET_ARGS=--v=2\n"},
			{Name: "kube-proxy.service", Contents: "[Unit]\nDescription=kube-proxy\n\n[Service]\nExecStart=/usr/local/bin/kube-proxy\n\n[Install]\nWantedBy=multi-user.target\n"},
		},
		Sysctls:     []nodeconfig.Sysctl{{Key: "net.ipv4.ip_forward", Value: "1"}},
		Modules:     []string{"br_netfilter"},
		SSHHostKeys: hostKeys,
		Enable:      []string{"containerd.service", "kubelet.service", "kube-proxy.service"},
	}
}

// Nodes returns both fixture nodes, keyed by name.
func Nodes(hostKeys []nodeconfig.File) map[string]nodeconfig.Node {
	return map[string]nodeconfig.Node{"cp1": ControlPlane(hostKeys), "w1": Worker(hostKeys)}
}

// WithCoreUser adds Flatcar's usual login user "core" with sudo, for the
// formats that can create users (ignition, cloud-init).
func WithCoreUser(n nodeconfig.Node) nodeconfig.Node {
	n.Users = append(append([]nodeconfig.User(nil), n.Users...), nodeconfig.User{
		Name: "core", Groups: []string{"docker"}, Sudo: true, SSHAuthorizedKeys: rootKeys[1:],
	})
	return n
}
