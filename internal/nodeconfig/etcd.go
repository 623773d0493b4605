package nodeconfig

import (
	"fmt"
	"strings"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// Timeouts that survive software emulation, where a busy vCPU can stall
// etcd for seconds; the defaults (100 ms / 1 s) cause endless elections.
const (
	etcdHeartbeatMS = 500
	etcdElectionMS  = 5000
)

func etcdMembers(c plan.Cluster) []plan.Node { return c.NodesWithRole(spec.RoleEtcd) }

// etcdClientURLs lists every member's client URL, for the API server and
// flannel.
func etcdClientURLs(c plan.Cluster) []string {
	var out []string
	for _, m := range etcdMembers(c) {
		out = append(out, fmt.Sprintf("https://%s", hostPort(m.Address.String(), EtcdClientPort)))
	}
	return out
}

func hostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func (b *builder) etcd() error {
	n, c := b.in.Node, b.in.Cluster
	for _, name := range []string{pki.EtcdServer(n.Name), pki.EtcdPeer(n.Name)} {
		if err := b.cert(name); err != nil {
			return err
		}
	}
	if err := b.caCert(pki.EtcdCA); err != nil {
		return err
	}
	var initial []string
	for _, m := range etcdMembers(c) {
		initial = append(initial, fmt.Sprintf("%s=https://%s", m.Name, hostPort(m.Address.String(), EtcdPeerPort)))
	}
	addr := n.Address.String()
	flags := []string{
		"--name=" + n.Name,
		"--data-dir=" + EtcdDataDir,
		"--listen-peer-urls=https://" + hostPort(addr, EtcdPeerPort),
		"--initial-advertise-peer-urls=https://" + hostPort(addr, EtcdPeerPort),
		"--listen-client-urls=https://" + hostPort(addr, EtcdClientPort),
		"--advertise-client-urls=https://" + hostPort(addr, EtcdClientPort),
		"--listen-metrics-urls=http://127.0.0.1:2381",
		"--initial-cluster=" + strings.Join(initial, ","),
		"--initial-cluster-token=" + c.Name,
		"--initial-cluster-state=new",
		"--client-cert-auth=true",
		"--trusted-ca-file=" + certPath(pki.EtcdCA),
		"--cert-file=" + certPath(pki.EtcdServer(n.Name)),
		"--key-file=" + keyPath(pki.EtcdServer(n.Name)),
		"--peer-client-cert-auth=true",
		"--peer-trusted-ca-file=" + certPath(pki.EtcdCA),
		"--peer-cert-file=" + certPath(pki.EtcdPeer(n.Name)),
		"--peer-key-file=" + keyPath(pki.EtcdPeer(n.Name)),
		fmt.Sprintf("--heartbeat-interval=%d", etcdHeartbeatMS),
		fmt.Sprintf("--election-timeout=%d", etcdElectionMS),
		"--snapshot-count=10000",
	}
	b.unit("etcd.service", fmt.Sprintf(`[Unit]
Description=etcd member %s of cluster %s
Documentation=https://etcd.io/docs/
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
%s
Restart=always
RestartSec=5
LimitNOFILE=65536
# Under emulation the first start of a member can take long.
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
`, n.Name, c.Name, execStart(bin("etcd"), flags)))
	b.enable("etcd.service")
	return nil
}

// execStart writes an ExecStart= line with one flag per continued line, so
// a person reading the unit sees every setting.
func execStart(binary string, flags []string) string {
	var sb strings.Builder
	sb.WriteString("ExecStart=" + binary)
	for _, f := range flags {
		sb.WriteString(" \\\n  " + f)
	}
	return sb.String()
}
