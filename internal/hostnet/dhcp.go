package hostnet

import (
	"net"
	"path/filepath"
	"strings"
)

// LeaseFile is where the DHCP server of DnsmasqArgs keeps its leases.
const LeaseFile = "dhcp.leases"

// DnsmasqArgs are the arguments for dnsmasq (dnsmasq-base) serving DHCP on
// the lab bridge for DHCP-based flows: only the fixed addresses of the
// nodes and the failsafe VM (no dynamic pool), the gateway as router, DNS
// off. Run it in the lab namespace (ip netns exec NS dnsmasq ...) after
// Apply; add --keep-in-foreground or --pid-file as the caller manages
// processes. The hosts are given as --dhcp-host options, the same lines as
// the dhcp-hosts file: dnsmasq reads a --dhcp-hostsfile only after dropping
// to user nobody, who cannot read a lab directory that is private to root.
func DnsmasqArgs(c Config) []string {
	n := c.Network
	network := n.CIDR.Masked().Addr()
	mask := net.IP(net.CIDRMask(n.CIDR.Bits(), 32)).String()
	args := []string{
		"--conf-file=/dev/null",
		"--port=0",
		"--interface=" + n.Bridge,
		"--bind-interfaces",
		"--except-interface=lo",
		"--dhcp-authoritative",
		"--dhcp-range=" + network.String() + ",static," + mask + ",infinite",
		"--dhcp-option=option:router," + n.Gateway.String(),
		"--dhcp-leasefile=" + filepath.Join(c.StateDir, LeaseFile),
	}
	for _, line := range strings.Split(string(c.dhcpHosts()), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			args = append(args, "--dhcp-host="+line)
		}
	}
	return args
}
