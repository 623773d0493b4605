package hostnet

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/daemon"
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

// Files of the lab's dnsmasq in StateDir.
const (
	dnsmasqPidFile = "dnsmasq.pid"
	DnsmasqLogFile = "dnsmasq.log"
	// dnsmasqReady is what dnsmasq logs once its DHCP socket is bound.
	dnsmasqReady = "DHCP, sockets bound"
)

func (c Config) dnsmasq() daemon.Process {
	lease := "--dhcp-leasefile=" + filepath.Join(c.StateDir, LeaseFile)
	return daemon.Process{Name: "dnsmasq (the lab's DHCP server)", PidFile: filepath.Join(c.StateDir, dnsmasqPidFile),
		LogFile: filepath.Join(c.StateDir, DnsmasqLogFile), Match: []string{lease}}
}

// dnsmasqCommand is dnsmasq as the lab runs it: in the foreground of its
// own session, logging each DHCP exchange to stderr (its log file).
func (c Config) dnsmasqCommand(binary string) []string {
	return append(append([]string{binary}, DnsmasqArgs(c)...), "--keep-in-foreground", "--log-facility=-", "--log-dhcp")
}

// ensureDnsmasq runs the lab's dnsmasq in the lab's namespace with c's
// hosts: started when missing, restarted when its hosts changed (nodes
// added or removed), left alone otherwise.
func (c Config) ensureDnsmasq(ns *namespaces, binary string) error {
	p := c.dnsmasq()
	want := c.dnsmasqCommand(binary)
	if pid, ok := p.Running(); ok {
		have, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && string(have) == strings.Join(want, "\x00")+"\x00" {
			return nil
		}
		if _, err := p.Stop(5 * time.Second); err != nil {
			return err
		}
	}
	cmd := exec.Command(want[0], want[1:]...)
	_, _, err := p.Start(cmd, dnsmasqReady, 20*time.Second, func(cmd *exec.Cmd) error {
		// Started from a thread in the lab's namespace, so dnsmasq lives
		// there, beside the bridge.
		return inNS(ns.lab, cmd.Start)
	})
	return err
}

// stopDnsmasq stops the lab's dnsmasq if it runs.
func (c Config) stopDnsmasq() error {
	_, err := c.dnsmasq().Stop(5 * time.Second)
	return err
}
