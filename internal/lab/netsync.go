package lab

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// A node keeps the network its configuration had when it was provisioned:
// its static routes to the other nodes' pod CIDRs and its /etc/hosts. When
// lab.yaml gains (or loses) a node, the nodes that are already running
// must learn about it, or their pods cannot reach the new node's pods.
// `up` and `start` therefore bring every node they find running up to the
// lab's current network, without a restart: routes are changed live, and
// the files are rewritten for the next boot.

// networkSyncScript makes a node's routes into the cluster's pod network
// exactly cfg's (adding missing ones, replacing changed ones, removing
// routes via a node that is no longer in the lab) and rewrites its networkd
// file and /etc/hosts when they differ. It prints one line per change.
// root prefixes the file paths (tests run it in a scratch directory).
// withNetworkd is false for nodes whose network file cloud-init wrote.
func networkSyncScript(root string, cfg nodeconfig.Node, podCIDRs []netip.Prefix, withNetworkd bool) (string, error) {
	hosts, ok := fileOf(cfg, nodeconfig.HostsFile)
	if !ok {
		return "", fmt.Errorf("node %s: its configuration has no %s", cfg.Name, nodeconfig.HostsFile)
	}
	files := []nodeconfig.File{hosts}
	if withNetworkd {
		nw := cfg.NetworkdFiles()
		if len(nw) != 1 {
			return "", fmt.Errorf("node %s: %d networkd files, want one", cfg.Name, len(nw))
		}
		files = append(files, nw[0])
	}
	dev := cfg.Network.Interface
	if dev == "" {
		dev = "eth0"
	}
	var b strings.Builder
	b.WriteString("set -e\n")
	for _, f := range files {
		p := path.Join(root, f.Path)
		fmt.Fprintf(&b, "t=$(mktemp); echo %s | base64 -d > \"$t\"\n", base64.StdEncoding.EncodeToString(f.Contents))
		fmt.Fprintf(&b, "if cmp -s \"$t\" %s; then rm -f \"$t\"; else chmod %o \"$t\"; mv -f \"$t\" %s; echo \"rewrote %s\"; fi\n",
			shellQuote(p), f.Mode, shellQuote(p), f.Path)
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range cfg.Network.Routes {
		want[r.To] = r.Via
	}
	tos := make([]netip.Prefix, 0, len(want))
	for to := range want {
		tos = append(tos, to)
	}
	sort.Slice(tos, func(i, j int) bool { return tos[i].String() < tos[j].String() })
	for _, to := range tos {
		via := want[to]
		fam := "-4"
		if to.Addr().Is6() {
			fam = "-6"
		}
		// "via X dev D" as ip prints it: unchanged routes print nothing.
		fmt.Fprintf(&b, "case \"$(ip %s route show %s)\" in *\"via %s dev %s\"*) ;; *) ip %s route replace %s via %s dev %s; echo \"route %s via %s\";; esac\n",
			fam, to, via, dev, fam, to, via, dev, to, via)
	}
	// Routes into the pod network via a node that left: gone. Routes
	// without "via" (the node's own pod bridge) are not kubelab's to touch.
	for _, cidr := range podCIDRs {
		fam := "-4"
		if cidr.Addr().Is6() {
			fam = "-6"
		}
		var keep []string
		for _, to := range tos {
			if cidr.Contains(to.Addr()) {
				keep = append(keep, to.String())
			}
		}
		fmt.Fprintf(&b, "ip %s route show root %s | while read -r to via gw dev ifc rest; do [ \"$via $dev $ifc\" = \"via dev %s\" ] || continue; case \" %s \" in *\" $to \"*) ;; *) ip %s route del \"$to\" via \"$gw\" dev %s; echo \"removed route $to via $gw\";; esac; done\n",
			fam, cidr, dev, strings.Join(keep, " "), fam, dev)
	}
	return b.String(), nil
}

func fileOf(cfg nodeconfig.Node, p string) (nodeconfig.File, bool) {
	for _, f := range cfg.Files {
		if f.Path == p {
			return f, true
		}
	}
	return nodeconfig.File{}, false
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// routedPodCIDRs are the cluster's pod networks whose routes kubelab owns:
// those of routes mode (flannel keeps its own).
func routedPodCIDRs(c plan.Cluster) []netip.Prefix {
	if c.PodNetwork != spec.PodNetworkRoutes {
		return nil
	}
	var out []netip.Prefix
	for _, p := range []netip.Prefix{c.PodCIDR, c.PodCIDR6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// syncNetwork brings a running node up to the lab's current network (see
// networkSyncScript) and returns what changed. A node provisioned by
// cloud-init keeps cloud-init's network file (which wins over kubelab's by
// name); its routes are brought up to date live after every boot instead.
func (e *Env) syncNetwork(ctx context.Context, c plan.Cluster, n plan.Node, cfg nodeconfig.Node) ([]string, error) {
	script, err := networkSyncScript("", cfg, routedPodCIDRs(c), n.Provisioning != spec.ProvisionCloudInit)
	if err != nil {
		return nil, err
	}
	// Right after its marker a node's sshd may still be starting: a few
	// tries. The script is idempotent, so a repeat is harmless.
	var out string
	for attempt := 1; ; attempt++ {
		out, err = e.sshOutput(ctx, n, script)
		if err == nil {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("bring %s's routes and hosts up to date: %w", n.Name, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bring %s's routes and hosts up to date: %w (last: %v)", n.Name, ctx.Err(), err)
		case <-time.After(5 * time.Second):
		}
	}
	var changes []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			changes = append(changes, l)
		}
	}
	return changes, nil
}
