package nodeconfig

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// VRRP settings of the API's virtual address.
const (
	// vrrpAdvertSeconds is the interval of the master's announcements; the
	// others take over after three missed ones. Two seconds rather than
	// keepalived's one: four emulated VMs on two cores delay announcements
	// by hundreds of milliseconds, and a false takeover moves the address
	// back and forth.
	vrrpAdvertSeconds = 2
	// vrrpRouterIDBase plus the cluster index is the VRRP router ID, so the
	// clusters of one lab never share one.
	vrrpRouterIDBase = 50
	vrrpTopPriority  = 150
)

// apiVirtualAddress makes a control plane of a cluster with two or more of
// them a keepalived VRRP peer of the others: the cluster's API virtual
// address lives on exactly one control plane whose API server accepts
// connections, moves when that node or its API server goes away, and stays
// where it is when an earlier holder comes back (nopreempt), so a healed
// node causes no second interruption. Announcements are unicast between
// the control planes' own addresses.
func (b *builder) apiVirtualAddress() error {
	n, c := b.in.Node, b.in.Cluster
	cps := c.NodesWithRole(spec.RoleControlPlane)
	rank := -1
	var peers []string
	for i, cp := range cps {
		if cp.Name == n.Name {
			rank = i
			continue
		}
		peers = append(peers, "        "+cp.Address.String())
	}
	if rank < 0 {
		return fmt.Errorf("node %s is not a control plane of cluster %s", n.Name, c.Name)
	}
	if c.Index < 0 || vrrpRouterIDBase+c.Index > 255 {
		return fmt.Errorf("cluster index %d gives no VRRP router ID (1-255)", c.Index)
	}
	conf := fmt.Sprintf(`global_defs {
    router_id %s
    enable_script_security
    script_user root
}

# The API server of this node accepts connections. A TCP connect is the
# check: with anonymous requests refused, /livez and /readyz answer 401
# to an unauthenticated probe anyway. 5 s to answer: under emulation a
# busy node took more than 2 s to start the check at all, and every such
# timeout dropped the address.
vrrp_script apiserver {
    script "/bin/bash -c '</dev/tcp/127.0.0.1/%d'"
    interval 5
    timeout 5
    fall 2
    rise 1
}

vrrp_instance api {
    state BACKUP
    nopreempt
    interface %s
    virtual_router_id %d
    priority %d
    advert_int %d
    unicast_src_ip %s
    unicast_peer {
%s
    }
    virtual_ipaddress {
        %s/%d dev %s
    }
    track_script {
        apiserver
    }
}
`, n.Name, APIServerPort, b.node.Network.Interface, vrrpRouterIDBase+c.Index, vrrpTopPriority-rank,
		vrrpAdvertSeconds, n.Address, strings.Join(peers, "\n"), c.APIVIP, b.in.Plan.Network.CIDR.Bits(), b.node.Network.Interface)
	what := fmt.Sprintf("The API virtual address %s of cluster %s, kept on one live control plane.", c.APIVIP, c.Name)
	if err := b.text(KeepalivedConfig, 0o644, what, conf); err != nil {
		return err
	}
	// kubelab's own unit rather than the package's: only the VRRP part runs
	// (no load-balancer checker), logging to the journal.
	b.unit("keepalived.service", fmt.Sprintf(`[Unit]
Description=keepalived: the API virtual address %s of cluster %s
Documentation=man:keepalived.conf(5)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/sbin/keepalived --dont-fork --vrrp --log-console --log-detail --use-file=%s
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
`, c.APIVIP, c.Name, KeepalivedConfig))
	b.enable("keepalived.service")
	return nil
}

// awaitPeerMinutes bounds a later control plane's wait, so a cluster whose
// earlier control planes are gone or stuck still starts.
const awaitPeerMinutes = 20

// awaitScript is the wait before a later control plane's API server
// starts. @NAMES@ are replaced. A node counts as up when its ssh port
// accepts connections; kubectl (about a second of CPU per run under
// emulation, taken from the API server that is starting) runs only once
// the API port accepts connections, and then every 10 s.
const awaitScript = `kubectl=@KUBECTL@
[ -x "$kubectl" ] || exit 0
end=$(( $(date +%s) + @SECONDS@ ))
listens() { timeout 5 bash -c "</dev/tcp/$1/$2" 2>/dev/null; }
ready() { listens "$1" @PORT@ && "$kubectl" --kubeconfig=@KUBECONFIG@ --server="https://$2" --request-timeout=10s get --raw=/readyz >/dev/null 2>&1; }
# The control plane before this one while it is up, else the endpoint.
turn() {
	if listens @PREV@ 22; then
		ready @PREV@ @PREVHOSTPORT@ && echo "@PREVNAME@'s API server is ready"
	else
		ready @VIP@ @VIPHOSTPORT@ && echo "@PREVNAME@ is down; the API server at @VIPHOSTPORT@ is ready"
	fi
}
until turn; do
	if [ "$(date +%s)" -ge "$end" ]; then
		echo "not ready within @MINUTES@ min: neither @PREVNAME@'s API server nor the one at @VIPHOSTPORT@; starting this one anyway"
		exit 0
	fi
	sleep 10
done
`

// awaitAPIEndpoint returns the kube-apiserver unit's lines that make every
// control plane but the cluster's first wait, at most awaitPeerMinutes,
// until the control plane before it has a ready API server (or, when that
// node is down, until the cluster's endpoint answers /readyz). So the API
// servers start one after the other, as kubeadm joins control planes.
// Measured on two emulated cores: three API servers starting together each
// take minutes of CPU for their post-start hooks; they time out against an
// etcd starved by them, exit, and start over (in one run none was ready
// after 20 min), and two starting together after the first did the same.
// The first control plane never waits; a healed node waits for nothing
// when the one before it serves. Nodes without kubectl skip the wait.
func (b *builder) awaitAPIEndpoint(kubeconfig string) (string, error) {
	n, c := b.in.Node, b.in.Cluster
	if !hasAPIVirtualAddress(c, n) {
		return "", nil
	}
	cps := c.NodesWithRole(spec.RoleControlPlane)
	rank := slices.IndexFunc(cps, func(cp plan.Node) bool { return cp.Name == n.Name })
	if rank <= 0 {
		return "", nil
	}
	prev := cps[rank-1]
	hostPort := func(a netip.Addr) string { return netip.AddrPortFrom(a, APIServerPort).String() }
	script := strings.NewReplacer(
		"@KUBECTL@", bin("kubectl"),
		"@SECONDS@", fmt.Sprint(awaitPeerMinutes*60),
		"@MINUTES@", fmt.Sprint(awaitPeerMinutes),
		"@PORT@", fmt.Sprint(APIServerPort),
		"@KUBECONFIG@", kubeconfig,
		"@PREV@", prev.Address.String(),
		"@PREVNAME@", prev.Name,
		"@PREVHOSTPORT@", hostPort(prev.Address),
		"@VIP@", c.APIVIP.String(),
		"@VIPHOSTPORT@", hostPort(c.APIVIP),
	).Replace(awaitScript)
	what := fmt.Sprintf("Run by kube-apiserver.service of %s before it starts: waits until %s's API server is ready (or, with %s down, the one at %s).", n.Name, prev.Name, prev.Name, hostPort(c.APIVIP))
	if err := b.text(AwaitAPIEndpoint, 0o755, what, script); err != nil {
		return "", err
	}
	return fmt.Sprintf("ExecStartPre=/bin/sh %s\nTimeoutStartSec=infinity\n", AwaitAPIEndpoint), nil
}

// hasAPIVirtualAddress reports whether node n carries the cluster's
// virtual address.
func hasAPIVirtualAddress(c plan.Cluster, n plan.Node) bool {
	return c.APIVIP.IsValid() && n.HasRole(spec.RoleControlPlane)
}
