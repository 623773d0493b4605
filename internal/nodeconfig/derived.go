package nodeconfig

import (
	"fmt"
	"path"
	"strings"
)

// Files the renderers derive from the structured parts of a Node. They live
// here so that no renderer repeats the logic: ignition and overlay write
// the networkd file, every renderer that writes files writes the others.

// NetworkdFiles is the systemd-networkd configuration of the node's
// interface: matched by MAC (robust against interface naming), static
// addresses (or IPv4 by DHCP), gateway, DNS and static routes. Router
// advertisements are off: otherwise networkd-wait-online waits for them
// (about 12 s a boot).
func (n Node) NetworkdFiles() []File {
	nw := n.Network
	var sb strings.Builder
	what := "Static network"
	if nw.DHCP4 {
		what = "Network (IPv4 by DHCP, the planned address by MAC)"
	}
	sb.WriteString(header("#", n.Source, fmt.Sprintf("%s of %s.", what, n.Name)))
	fmt.Fprintf(&sb, "[Match]\nMACAddress=%s\n\n[Network]\n", nw.MAC)
	if nw.DHCP4 {
		// Keep the lease's address through a restart of networkd (the
		// node's API server and etcd listen on it).
		sb.WriteString("DHCP=ipv4\nKeepConfiguration=dhcp\n")
	}
	for _, a := range nw.Addresses {
		if nw.DHCP4 && a.Addr().Is4() {
			continue
		}
		fmt.Fprintf(&sb, "Address=%s\n", a)
	}
	if nw.Gateway.IsValid() && !nw.DHCP4 {
		fmt.Fprintf(&sb, "Gateway=%s\n", nw.Gateway)
	}
	if nw.Gateway6.IsValid() {
		fmt.Fprintf(&sb, "Gateway=%s\n", nw.Gateway6)
	}
	for _, d := range nw.DNS {
		fmt.Fprintf(&sb, "DNS=%s\n", d)
	}
	sb.WriteString("IPv6AcceptRA=no\n")
	for _, r := range nw.Routes {
		fmt.Fprintf(&sb, "\n[Route]\nDestination=%s\nGateway=%s\n", r.To, r.Via)
	}
	if nw.DHCP4 {
		// The lab's DHCP server gives no DNS or NTP; the node's own
		// settings above stay.
		sb.WriteString("\n[DHCPv4]\nUseDNS=no\nUseNTP=no\nUseHostname=no\nSendRelease=no\n")
	}
	name := nw.Interface
	if name == "" {
		name = "eth0"
	}
	return []File{{
		Path:     path.Join(NetworkdDir, "10-kubelab-"+name+".network"),
		Mode:     0o644,
		Owner:    "root",
		Group:    "root",
		Contents: []byte(sb.String()),
	}}
}

// SysctlFile sets the node's kernel parameters at boot (systemd-sysctl runs
// after systemd-modules-load, so br_netfilter's keys exist by then).
func (n Node) SysctlFile() File {
	var sb strings.Builder
	sb.WriteString(header("#", n.Source, "Kernel parameters Kubernetes needs."))
	for _, s := range n.Sysctls {
		fmt.Fprintf(&sb, "%s = %s\n", s.Key, s.Value)
	}
	return File{Path: SysctlPath, Mode: 0o644, Owner: "root", Group: "root", Contents: []byte(sb.String())}
}

// ModulesFile loads the node's kernel modules at boot.
func (n Node) ModulesFile() File {
	var sb strings.Builder
	sb.WriteString(header("#", n.Source, "Kernel modules Kubernetes needs."))
	for _, m := range n.Modules {
		sb.WriteString(m + "\n")
	}
	return File{Path: ModulesPath, Mode: 0o644, Owner: "root", Group: "root", Contents: []byte(sb.String())}
}

// HostnameFile is /etc/hostname. It holds only the name: some tools read
// the file's first line verbatim.
func (n Node) HostnameFile() File {
	return File{Path: HostnamePath, Mode: 0o644, Owner: "root", Group: "root", Contents: []byte(n.Hostname + "\n")}
}

// SystemFiles are the derived files every renderer that writes files
// places besides n.Files: hostname, sysctls, modules. The network is
// separate (NetworkdFiles) because cloud-init describes it in its own
// network-config.
func (n Node) SystemFiles() []File {
	return []File{n.HostnameFile(), n.SysctlFile(), n.ModulesFile()}
}

// UnitFile is where a unit (or its drop-in) is written on the node.
func (u Unit) UnitFile() string {
	if u.DropIn != "" {
		return path.Join(SystemdUnitDir, u.Name+".d", u.DropIn)
	}
	return path.Join(SystemdUnitDir, u.Name)
}
