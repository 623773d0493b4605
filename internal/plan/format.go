package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// JSON renders the plan for machines; indentation and field order are fixed
// so the output is byte-identical for the same spec.
func (p *Plan) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode plan as JSON: %w", err)
	}
	return append(b, '\n'), nil
}

// YAML renders the plan with the same field names as JSON.
func (p *Plan) YAML() ([]byte, error) {
	j, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("encode plan as YAML: %w", err)
	}
	return y, nil
}

// Text renders the plan for people, in the spirit of the Xen guide's
// "network layout": networks, a node table and the host forwards.
func (p *Plan) Text() []byte {
	var b bytes.Buffer
	n := p.Network
	fmt.Fprintf(&b, "Lab %q\n", p.Lab)
	fmt.Fprintf(&b, "  network   %s  bridge %s  gateway (host) %s", n.CIDR, n.Bridge, n.Gateway)
	if n.Namespace != "" {
		fmt.Fprintf(&b, "  namespace %s", n.Namespace)
	}
	if n.DHCP {
		b.WriteString("  dhcp (dnsmasq, addresses by MAC)")
	}
	if n.ConfigServer {
		fmt.Fprintf(&b, "  config server http://%s:%d", n.Gateway, n.ConfigServerPort)
	}
	fmt.Fprintf(&b, "\n  failsafe  %s  mac %s  ssh host port %d\n", n.Failsafe, n.FailsafeMAC, n.FailsafeSSHPort)
	if n.CIDR6.IsValid() {
		fmt.Fprintf(&b, "  network6  %s  gateway %s\n", n.CIDR6, n.Gateway6)
	}
	for _, c := range p.Clusters {
		fmt.Fprintf(&b, "\nCluster %q (block %d: %s-%s)  Kubernetes %s\n", c.Name, c.Index, c.Block[0], c.Block[1], c.KubernetesVersion)
		fmt.Fprintf(&b, "  pods      %s (%s)", c.PodCIDR, c.PodNetwork)
		if c.PodCIDR6.IsValid() {
			fmt.Fprintf(&b, " + %s", c.PodCIDR6)
		}
		fmt.Fprintf(&b, "\n  services  %s  kubernetes %s  dns %s", c.ServiceCIDR, c.APIServiceIP, c.DNSServiceIP)
		if c.ServiceCIDR6.IsValid() {
			fmt.Fprintf(&b, " + %s", c.ServiceCIDR6)
		}
		fmt.Fprintf(&b, "\n  api       https://%s  (host port %d)", c.APIServer, c.APIHostPort)
		if c.APIVIP.IsValid() {
			b.WriteString("  virtual address on a live control plane (keepalived)")
		}
		b.WriteString("\n")
		fmt.Fprintf(&b, "  nodeports %d-%d\n\n", c.NodePortFrom, c.NodePortTo)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tROLES\tADDRESS\tMAC\tPOD CIDR\tSSH\tCPU\tMEMORY\tPROVISIONING")
		for _, nd := range c.Nodes {
			pod := "-"
			if nd.PodCIDR.IsValid() {
				pod = nd.PodCIDR.String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%d\t%dMiB\t%s\n", nd.Name, strings.Join(nd.Roles, ","), nd.Address, nd.MAC, pod, nd.SSHHostPort, nd.CPUs, nd.MemoryMiB, nd.Provisioning)
		}
		tw.Flush()
	}
	b.WriteString("\nHost port forwards\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  HOST PORT\tTARGET\tPURPOSE")
	for _, f := range p.Forwards {
		who := f.Purpose
		if f.Node != "" {
			who += " " + f.Node
		} else if f.Cluster != "" {
			who += " " + f.Cluster
		}
		if f.Purpose == "nodeports" {
			who = "nodeports " + f.Cluster + " (via " + f.Node + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", portRange(f.HostFrom, f.HostTo), f.Target.String()+":"+portRange(f.TargetFrom, f.TargetTo), who)
	}
	tw.Flush()
	return b.Bytes()
}

func portRange(from, to int) string {
	if from == to {
		return fmt.Sprint(from)
	}
	return fmt.Sprintf("%d-%d", from, to)
}
