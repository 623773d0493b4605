package plan

import (
	"bytes"
	"fmt"
	"html"
	"strings"

	"github.com/kubelab/kubelab/internal/spec"
)

// The diagram's geometry, in SVG user units (pixels at 100 %).
const (
	svgMargin     = 20
	svgLine       = 16 // text line height
	svgNodeW      = 320
	svgNodeH      = 4*svgLine + 8
	svgNodeGap    = 10
	svgClusterPad = 12
	svgColumnGap  = 24
)

// svgWriter collects SVG elements; every coordinate is an integer, so a
// plan always gives the same bytes.
type svgWriter struct{ b bytes.Buffer }

func (w *svgWriter) rect(x, y, wd, ht int, class string) {
	fmt.Fprintf(&w.b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"6\" class=\"%s\"/>\n", x, y, wd, ht, class)
}

func (w *svgWriter) line(x1, y1, x2, y2 int, class string) {
	fmt.Fprintf(&w.b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" class=\"%s\"/>\n", x1, y1, x2, y2, class)
}

func (w *svgWriter) text(x, y int, class, s string) {
	fmt.Fprintf(&w.b, "<text x=\"%d\" y=\"%d\" class=\"%s\">%s</text>\n", x, y, class, html.EscapeString(s))
}

// SVG draws the plan the way the "Kubernetes and Xen" guide explains its
// networks: the host with its port forwards on top, the lab bridge with
// the gateway under it, and one column per cluster hanging from the bridge
// with its nodes (name, roles, address, MAC, pod CIDR) and below them the
// cluster's pod and service networks. Deterministic for a plan.
func (p *Plan) SVG() []byte {
	clusterW := svgNodeW + 2*svgClusterPad
	columns := max(len(p.Clusters), 1)
	width := 2*svgMargin + columns*clusterW + (columns-1)*svgColumnGap
	width = max(width, 2*svgMargin+2*svgNodeW+svgColumnGap)

	var body svgWriter
	y := svgMargin

	// The host and its forwards.
	hostLines := []string{"host: the lab's only way in (port forwards)"}
	for _, f := range p.Forwards {
		hostLines = append(hostLines, forwardText(f))
	}
	hostH := len(hostLines)*svgLine + 12
	body.rect(svgMargin, y, width-2*svgMargin, hostH, "host")
	for i, l := range hostLines {
		class := "small"
		if i == 0 {
			class = "title"
		}
		body.text(svgMargin+10, y+svgLine+i*svgLine, class, l)
	}
	y += hostH

	// The bridge.
	n := p.Network
	body.line(width/2, y, width/2, y+20, "wire")
	y += 20
	bridge := fmt.Sprintf("bridge %s  %s  gateway %s (NAT out)", n.Bridge, n.CIDR, n.Gateway)
	if n.CIDR6.IsValid() {
		bridge += fmt.Sprintf("  %s gateway %s", n.CIDR6, n.Gateway6)
	}
	if n.Namespace != "" {
		bridge += "  in namespace " + n.Namespace
	}
	if n.DHCP {
		bridge += "  DHCP by MAC"
	}
	body.rect(svgMargin, y, width-2*svgMargin, 2*svgLine+8, "bridge")
	body.text(svgMargin+10, y+svgLine+2, "title", bridge)
	body.text(svgMargin+10, y+2*svgLine+2, "small", fmt.Sprintf("failsafe VM %s (%s), ssh on host port %d", n.Failsafe, n.FailsafeMAC, n.FailsafeSSHPort))
	y += 2*svgLine + 8

	// One column per cluster.
	top := y + 24
	bottom := top
	for i, c := range p.Clusters {
		x := svgMargin + i*(clusterW+svgColumnGap)
		body.line(x+clusterW/2, y, x+clusterW/2, top, "wire")
		cy := top
		lines := []string{
			fmt.Sprintf("cluster %s: %s-%s", c.Name, c.Block[0], c.Block[1]),
			"Kubernetes " + c.KubernetesVersion,
			fmt.Sprintf("API https://%s (host port %d)", c.APIServer, c.APIHostPort),
		}
		if c.APIVIP.IsValid() {
			lines = append(lines, "virtual address on a live control plane")
		}
		headH := len(lines)*svgLine + 6
		nodesH := len(c.Nodes) * (svgNodeH + svgNodeGap)
		netLines := []string{
			fmt.Sprintf("pod network %s (%s)", c.PodCIDR, c.PodNetwork),
			fmt.Sprintf("services %s, DNS %s", c.ServiceCIDR, c.DNSServiceIP),
			fmt.Sprintf("node ports %d-%d", c.NodePortFrom, c.NodePortTo),
		}
		if c.PodCIDR6.IsValid() {
			netLines = append(netLines, fmt.Sprintf("pods6 %s, services6 %s", c.PodCIDR6, c.ServiceCIDR6))
		}
		netH := len(netLines)*svgLine + 10
		h := svgClusterPad + headH + nodesH + netH + svgClusterPad
		body.rect(x, cy, clusterW, h, "cluster")
		for j, l := range lines {
			class := "small"
			if j == 0 {
				class = "title"
			}
			body.text(x+svgClusterPad, cy+svgClusterPad+svgLine-2+j*svgLine, class, l)
		}
		ny := cy + svgClusterPad + headH
		for _, nd := range c.Nodes {
			class := "node"
			switch {
			case nd.HasRole(spec.RoleControlPlane):
				class = "node cp"
			case nd.HasRole(spec.RoleEtcd):
				class = "node etcd"
			}
			body.rect(x+svgClusterPad, ny, svgNodeW, svgNodeH, class)
			tx := x + svgClusterPad + 8
			body.text(tx, ny+svgLine, "title", fmt.Sprintf("%s  [%s]", nd.Name, strings.Join(nd.Roles, ", ")))
			body.text(tx, ny+2*svgLine, "small", fmt.Sprintf("%s  %s", nd.Address, nd.MAC))
			pods := "no pods"
			if nd.PodCIDR.IsValid() {
				pods = "pods " + nd.PodCIDR.String()
			}
			body.text(tx, ny+3*svgLine, "small", fmt.Sprintf("%s  ssh :%d", pods, nd.SSHHostPort))
			body.text(tx, ny+4*svgLine, "small", fmt.Sprintf("%d vCPU, %d MiB, %s", nd.CPUs, nd.MemoryMiB, nd.Provisioning))
			ny += svgNodeH + svgNodeGap
		}
		body.rect(x+svgClusterPad, ny, svgNodeW, netH-6, "net")
		for j, l := range netLines {
			body.text(x+svgClusterPad+8, ny+svgLine+j*svgLine, "small", l)
		}
		bottom = max(bottom, cy+h)
	}
	height := bottom + svgMargin

	var out bytes.Buffer
	fmt.Fprintf(&out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", width, height, width, height)
	fmt.Fprintf(&out, "<title>%s</title>\n", html.EscapeString("kubelab plan of lab "+p.Lab))
	out.WriteString(`<style>
text { font-family: DejaVu Sans Mono, monospace; fill: #1a1a1a; }
.title { font-size: 12px; font-weight: bold; }
.small { font-size: 11px; }
rect { stroke: #555; stroke-width: 1; }
.host { fill: #eef3fb; }
.bridge { fill: #fdf3e1; }
.cluster { fill: #f6f6f6; }
.node { fill: #ffffff; }
.cp { fill: #e6f4ea; }
.etcd { fill: #fff4d6; }
.net { fill: #eef0ff; stroke-dasharray: 4 3; }
.wire { stroke: #555; stroke-width: 2; }
</style>
`)
	fmt.Fprintf(&out, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\" stroke=\"none\"/>\n", width, height)
	out.Write(body.b.Bytes())
	out.WriteString("</svg>\n")
	return out.Bytes()
}

// forwardText is one forward as the host box lists it.
func forwardText(f Forward) string {
	who := f.Purpose
	switch {
	case f.Purpose == "nodeports":
		who = "node ports of " + f.Cluster
	case f.Node != "":
		who += " " + f.Node
	case f.Cluster != "":
		who += " " + f.Cluster
	}
	return fmt.Sprintf(":%s -> %s:%s  %s", portRange(f.HostFrom, f.HostTo), f.Target, portRange(f.TargetFrom, f.TargetTo), who)
}
