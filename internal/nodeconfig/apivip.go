package nodeconfig

import (
	"fmt"
	"net/netip"
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

// awaitPeerMinutes bounds a later control plane's wait for the cluster's
// API endpoint, so a cluster whose first control plane is gone still starts.
const awaitPeerMinutes = 10

// awaitAPIEndpoint returns the kube-apiserver unit's lines that make a
// control plane other than the cluster's first wait, at most
// awaitPeerMinutes, until the cluster's API endpoint answers /readyz: some
// other API server is up and has written the cluster's bootstrap data
// (RBAC roles, system namespaces, priority levels). So the control planes'
// API servers start one after the other, as kubeadm joins them, instead of
// all at once. Measured on two emulated cores: three API servers starting
// together each take minutes of CPU for their post-start hooks; they time
// out against an etcd starved by them, exit, and start over, and in one run
// none was ready after 20 min. The first control plane never waits; the
// others wait for nothing when a peer is already serving (a node healed).
// Nodes without kubectl in their image skip the wait.
func (b *builder) awaitAPIEndpoint(kubeconfig string) (string, error) {
	n, c := b.in.Node, b.in.Cluster
	if !hasAPIVirtualAddress(c, n) {
		return "", nil
	}
	cps := c.NodesWithRole(spec.RoleControlPlane)
	if len(cps) == 0 || cps[0].Name == n.Name {
		return "", nil
	}
	endpoint := "https://" + netip.AddrPortFrom(c.APIVIP, APIServerPort).String()
	// kubectl costs about a second of CPU per run under emulation, CPU the
	// starting API server needs: it runs only once the endpoint accepts
	// connections (a bash TCP connect costs a tenth of that), and then every
	// 10 s.
	script := fmt.Sprintf(`kubectl=%s
[ -x "$kubectl" ] || exit 0
end=$(( $(date +%%s) + %d ))
ready() {
	timeout 5 bash -c '</dev/tcp/%s/%d' 2>/dev/null || return 1
	"$kubectl" --kubeconfig=%s --server=%s --request-timeout=10s get --raw=/readyz >/dev/null 2>&1
}
until ready; do
	if [ "$(date +%%s)" -ge "$end" ]; then
		echo "no API server answered at %s within %d min; starting this one anyway"
		exit 0
	fi
	sleep 10
done
echo "the API server at %s is ready; starting this one"
`, bin("kubectl"), awaitPeerMinutes*60, c.APIVIP, APIServerPort, kubeconfig, endpoint, endpoint, awaitPeerMinutes, endpoint)
	what := fmt.Sprintf("Run by kube-apiserver.service of %s (not the first control plane of cluster %s) before it starts: waits until another API server serves %s.", n.Name, c.Name, endpoint)
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
