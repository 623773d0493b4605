package nodeconfig

import (
	"fmt"
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
# to an unauthenticated probe anyway.
vrrp_script apiserver {
    script "/bin/bash -c '</dev/tcp/127.0.0.1/%d'"
    interval 2
    timeout 2
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

// hasAPIVirtualAddress reports whether node n carries the cluster's
// virtual address.
func hasAPIVirtualAddress(c plan.Cluster, n plan.Node) bool {
	return c.APIVIP.IsValid() && n.HasRole(spec.RoleControlPlane)
}
