// Package hostnet wires the host for a lab: a Linux bridge with the
// gateway address, one persistent tap per node, optionally a network
// namespace holding all of it (linked to the caller's namespace by a veth
// pair), and one nftables table with the lab's NAT, port forwards and
// forwarding accept rules. Every link carries an alias naming the lab and
// every rule lives in the table kubelab-<lab>, so Remove deletes exactly
// what Apply made.
//
// "The host" is the network namespace of the calling OS thread. A caller
// that switched namespaces must lock its thread (runtime.LockOSThread).
package hostnet

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubelab/kubelab/internal/plan"
)

// Config is what Apply, Remove and Show need from the plan.
type Config struct {
	Lab      string
	Network  plan.Network
	Nodes    []plan.Node
	Forwards []plan.Forward
	// StateDir is the lab's hostnet/ directory: state.json, dhcp-hosts,
	// rules.nft.
	StateDir string
	// Transfer is the /30 between the host and the lab namespace. Empty
	// picks one from 169.254.0.0/16, derived from the lab's name and kept in
	// state.json.
	Transfer netip.Prefix
}

// FromPlan builds a Config for every node and forward of p.
func FromPlan(p *plan.Plan, stateDir string) Config {
	c := Config{Lab: p.Lab, Network: p.Network, Forwards: p.Forwards, StateDir: stateDir}
	for _, cl := range p.Clusters {
		c.Nodes = append(c.Nodes, cl.Nodes...)
	}
	return c
}

// Files written into StateDir.
const (
	StateFile     = "state.json"
	DHCPHostsFile = "dhcp-hosts"
	RulesFile     = "rules.nft"
)

func (c Config) validate() error {
	if c.Lab == "" {
		return fmt.Errorf("hostnet: lab name is empty")
	}
	if c.StateDir == "" {
		return fmt.Errorf("hostnet: state directory is empty")
	}
	n := c.Network
	if n.Bridge == "" || len(n.Bridge) > maxIfName {
		return fmt.Errorf("hostnet: bridge name %q must have 1-%d characters", n.Bridge, maxIfName)
	}
	if !n.CIDR.IsValid() || !n.CIDR.Addr().Is4() || !n.CIDR.Contains(n.Gateway) {
		return fmt.Errorf("hostnet: network %s with gateway %s: need an IPv4 network holding the gateway", n.CIDR, n.Gateway)
	}
	if c.Transfer.IsValid() && (c.Transfer.Bits() != 30 || !c.Transfer.Addr().Is4()) {
		return fmt.Errorf("hostnet: transfer network %s must be an IPv4 /30", c.Transfer)
	}
	seen := map[string]string{}
	for _, nd := range c.Nodes {
		if !n.CIDR.Contains(nd.Address) {
			return fmt.Errorf("hostnet: node %s address %s is outside the lab network %s", nd.Name, nd.Address, n.CIDR)
		}
		tap := TapName(n.Bridge, nd, n)
		if other, ok := seen[tap]; ok {
			return fmt.Errorf("hostnet: nodes %s and %s would share tap %s", other, nd.Name, tap)
		}
		seen[tap] = nd.Name
	}
	return nil
}

func (c Config) gatewayPrefixes() []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(c.Network.Gateway, c.Network.CIDR.Bits())}
	if c.Network.CIDR6.IsValid() && c.Network.Gateway6.IsValid() {
		out = append(out, netip.PrefixFrom(c.Network.Gateway6, c.Network.CIDR6.Bits()))
	}
	return out
}

// namespaces holds the handles Apply, Remove and Show work with. In the
// default mode the lab lives in the host's namespace and lab == host.
type namespaces struct {
	host, lab   netns.NsHandle
	hostH, labH *netlink.Handle
	nft         *nftables.Conn // in the host namespace
	created     bool
	separate    bool
}

func (n *namespaces) close() {
	if n.labH != nil && n.labH != n.hostH {
		n.labH.Close()
	}
	if n.hostH != nil {
		n.hostH.Close()
	}
	if n.separate && n.lab.IsOpen() {
		n.lab.Close()
	}
	if n.host.IsOpen() {
		n.host.Close()
	}
}

// open gets handles on the host namespace and, when the lab has its own,
// on that one: created when missing if create is set, absent (lab == -1,
// labH nil) otherwise.
func open(c Config, create bool) (*namespaces, error) {
	host, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("hostnet: current network namespace: %w", err)
	}
	n := &namespaces{host: host, lab: host}
	if n.hostH, err = netlink.NewHandleAt(host); err != nil {
		n.close()
		return nil, fmt.Errorf("hostnet: netlink in the host namespace: %w", err)
	}
	if n.nft, err = nftables.New(nftables.WithNetNSFd(int(host))); err != nil {
		n.close()
		return nil, fmt.Errorf("hostnet: nftables connection: %w", err)
	}
	n.labH = n.hostH
	if c.Network.Namespace == "" {
		return n, nil
	}
	n.separate = true
	n.labH = nil
	if !create && !namespaceExists(c.Network.Namespace) {
		n.lab = -1
		return n, nil
	}
	if n.lab, n.created, err = openNamespace(c.Network.Namespace); err != nil {
		n.close()
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	if n.labH, err = netlink.NewHandleAt(n.lab); err != nil {
		n.close()
		return nil, fmt.Errorf("hostnet: netlink in namespace %s: %w", c.Network.Namespace, err)
	}
	return n, nil
}

// Apply converges the host network to c from whatever state it is in and
// returns what exists afterwards. Links that exist are reused, missing ones
// made, taps of nodes no longer in c removed; the nftables table is replaced
// in one transaction when it differs from c's rules.
func Apply(ctx context.Context, c Config) (State, error) {
	if err := c.validate(); err != nil {
		return State{}, err
	}
	chains, err := c.rules()
	if err != nil {
		return State{}, fmt.Errorf("hostnet: %w", err)
	}
	var dnsmasq string
	if c.Network.DHCP {
		// Checked before anything on the host changes.
		if dnsmasq, err = exec.LookPath("dnsmasq"); err != nil {
			return State{}, fmt.Errorf("hostnet: network.dhcp needs dnsmasq (apt-get install dnsmasq-base, or run hack/install-deps.sh): %w", err)
		}
		if _, running := c.dnsmasq().Running(); !running {
			if err := dhcpPortFree(c.Network.Namespace); err != nil {
				return State{}, fmt.Errorf("hostnet %s: network.dhcp: %w", c.Lab, err)
			}
		}
	}
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return State{}, fmt.Errorf("hostnet: %w", err)
	}
	saved, err := loadSaved(c.StateDir)
	if err != nil {
		return State{}, err
	}
	if saved.Namespace != c.Network.Namespace {
		// What was recorded concerns another namespace (the config changed).
		saved.NamespaceCreated = false
	}
	saved.Lab, saved.Namespace = c.Lab, c.Network.Namespace

	ns, err := open(c, true)
	if err != nil {
		return State{}, err
	}
	defer ns.close()
	if ns.created {
		// Record it at once: if anything below fails, Remove still knows the
		// namespace is kubelab's to delete.
		saved.NamespaceCreated = true
		if err := saveState(c.StateDir, saved); err != nil {
			return State{}, err
		}
	}
	if !ns.separate {
		saved.NamespaceCreated = false
	}

	step := func(what string, fn func() error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(); err != nil {
			return fmt.Errorf("hostnet %s: %s: %w", c.Lab, what, err)
		}
		return nil
	}

	if ns.separate {
		// Servers the lab runs in its namespace (DHCP, Ignition over HTTP)
		// may want loopback.
		if err := step("loopback in the lab namespace", func() error {
			lo, err := ns.labH.LinkByName("lo")
			if err != nil {
				return err
			}
			return up(ns.labH, lo)
		}); err != nil {
			return State{}, err
		}
	}
	var bridge netlink.Link
	if err := step("bridge", func() (err error) {
		bridge, err = ensureBridge(ns.labH, c.Lab, c.Network.Bridge, c.gatewayPrefixes())
		return err
	}); err != nil {
		return State{}, err
	}
	if err := step("taps", func() error { return c.ensureTaps(ns, bridge) }); err != nil {
		return State{}, err
	}
	if err := step("ip forwarding", func() error {
		if saved.HostIPForwardWas == nil {
			was, err := readIPForward(ns.host)
			if err != nil {
				return err
			}
			saved.HostIPForwardWas = &was
		}
		if err := saveState(c.StateDir, saved); err != nil {
			return err
		}
		if err := writeIPForward(ns.host, true); err != nil {
			return err
		}
		if ns.separate {
			return writeIPForward(ns.lab, true)
		}
		return nil
	}); err != nil {
		return State{}, err
	}
	if ns.separate {
		if err := step("veth to the lab namespace", func() error {
			t, err := c.chooseTransfer(ns.hostH, saved.Transfer)
			if err != nil {
				return err
			}
			saved.Transfer = t
			hostName, labName := vethNames(c.Network.Bridge)
			return ensureVeth(ns.hostH, ns.labH, ns.lab, c.Lab, hostName, labName, t, c.Network.CIDR)
		}); err != nil {
			return State{}, err
		}
	}
	want := renderTable(TableName(c.Lab), chains)
	if err := step("nftables", func() error {
		have, ok, err := readTable(ns.nft, TableName(c.Lab))
		if err != nil {
			return err
		}
		if ok && renderTable(TableName(c.Lab), have) == want {
			return nil
		}
		return replaceTable(ns.nft, TableName(c.Lab), chains)
	}); err != nil {
		return State{}, err
	}
	if err := step("files", func() error {
		if err := writeFile(filepath.Join(c.StateDir, RulesFile), []byte(c.rulesHeader()+want)); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(c.StateDir, DHCPHostsFile), c.dhcpHosts()); err != nil {
			return err
		}
		return saveState(c.StateDir, saved)
	}); err != nil {
		return State{}, err
	}
	if err := step("dhcp", func() error {
		if c.Network.DHCP {
			return c.ensureDnsmasq(ns, dnsmasq)
		}
		return c.stopDnsmasq() // turned off since the last Apply
	}); err != nil {
		return State{}, err
	}
	return show(c, ns, saved)
}

// rules are the lab's chains; the lab side is the bridge, or the veth when
// the lab has its own namespace.
func (c Config) rules() ([]chainSpec, error) {
	labSide := c.Network.Bridge
	if c.Network.Namespace != "" {
		labSide, _ = vethNames(c.Network.Bridge)
	}
	return desiredChains(c.Network.CIDR, labSide, c.Forwards)
}

// ensureTaps makes one tap per node and deletes lab taps of nodes that are
// gone.
func (c Config) ensureTaps(ns *namespaces, bridge netlink.Link) error {
	want := map[string]bool{}
	for _, nd := range c.Nodes {
		name := TapName(c.Network.Bridge, nd, c.Network)
		want[name] = true
		if err := ensureTap(ns.labH, ns.lab, c.Lab, name, bridge); err != nil {
			return fmt.Errorf("node %s: %w", nd.Name, err)
		}
	}
	owned, err := ownedLinks(ns.labH, c.Lab, roleTap)
	if err != nil {
		return err
	}
	for _, l := range owned {
		if !want[l.Attrs().Name] {
			if err := ns.labH.LinkDel(l); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete stale tap %s: %w", l.Attrs().Name, err)
			}
		}
	}
	return nil
}

// chooseTransfer picks the transfer /30: the configured one, the one in
// use, or the first derived candidate that no address of the host overlaps.
func (c Config) chooseTransfer(hostH *netlink.Handle, saved netip.Prefix) (netip.Prefix, error) {
	if c.Transfer.IsValid() {
		return c.Transfer.Masked(), nil
	}
	if saved.IsValid() {
		return saved, nil
	}
	hostName, _ := vethNames(c.Network.Bridge)
	for i := uint64(0); i < 64; i++ {
		p := transferCandidate(c.Lab, i)
		if p.Overlaps(metadataNet) || p.Overlaps(c.Network.CIDR) {
			continue
		}
		busy, err := hostAddrsOverlap(hostH, p, hostName)
		if err != nil {
			return netip.Prefix{}, err
		}
		if !busy {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /30 in %s for the lab namespace link; set one explicitly", linkLocal)
}

// Remove deletes everything Apply made for c: the nftables table, taps,
// bridge, veth, and the lab namespace if Apply created it. What does not
// exist is skipped, so Remove can run any number of times.
func Remove(ctx context.Context, c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	saved, err := loadSaved(c.StateDir)
	if err != nil {
		return err
	}
	ns, err := open(c, false)
	if err != nil {
		return err
	}
	defer ns.close()
	fail := func(what string, err error) error { return fmt.Errorf("hostnet %s: remove %s: %w", c.Lab, what, err) }

	// Whether or not the lab still asks for DHCP: one may run from before.
	if err := c.stopDnsmasq(); err != nil {
		return fail("dnsmasq", err)
	}
	if err := deleteTable(ns.nft, TableName(c.Lab)); err != nil {
		return fail("rules", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if ns.labH != nil {
		taps, err := ownedLinks(ns.labH, c.Lab, roleTap)
		if err != nil {
			return fail("taps", err)
		}
		for _, l := range taps {
			if err := ns.labH.LinkDel(l); err != nil && !isNotFound(err) {
				return fail("tap "+l.Attrs().Name, err)
			}
		}
		// Unmarked taps with the names of c's nodes (a run that stopped
		// between creating and marking one).
		for _, nd := range c.Nodes {
			if err := deleteOwned(ns.labH, c.Lab, roleTap, TapName(c.Network.Bridge, nd, c.Network)); err != nil {
				return fail("taps", err)
			}
		}
		if err := deleteOwned(ns.labH, c.Lab, roleBridge, c.Network.Bridge); err != nil {
			return fail("bridge", err)
		}
	}
	if ns.separate {
		hostName, _ := vethNames(c.Network.Bridge)
		if err := deleteOwned(ns.hostH, c.Lab, roleVeth, hostName); err != nil {
			return fail("veth", err)
		}
		if ns.labH != nil && saved.NamespaceCreated && saved.Namespace == c.Network.Namespace {
			if err := netns.DeleteNamed(c.Network.Namespace); err != nil && !os.IsNotExist(err) {
				return fail("namespace "+c.Network.Namespace, err)
			}
		}
	}
	if saved.HostIPForwardWas != nil && !*saved.HostIPForwardWas {
		// Turn forwarding back off only when no other lab still needs it.
		tables, err := listTables(ns.nft)
		if err != nil {
			return fail("ip forwarding", err)
		}
		if !otherLabTables(tables) {
			if err := writeIPForward(ns.host, false); err != nil {
				return fail("ip forwarding", err)
			}
		}
	}
	for _, f := range []string{StateFile, DHCPHostsFile, RulesFile, LeaseFile, DnsmasqLogFile} {
		if err := os.Remove(filepath.Join(c.StateDir, f)); err != nil && !os.IsNotExist(err) {
			return fail("files", err)
		}
	}
	_ = os.Remove(c.StateDir) // only when empty
	return nil
}

func otherLabTables(tables []string) bool {
	for _, t := range tables {
		if len(t) > len("kubelab-") && t[:len("kubelab-")] == "kubelab-" {
			return true
		}
	}
	return false
}

// Show reports what exists of c's host network, without changing anything.
func Show(ctx context.Context, c Config) (State, error) {
	if err := c.validate(); err != nil {
		return State{}, err
	}
	saved, err := loadSaved(c.StateDir)
	if err != nil {
		return State{}, err
	}
	ns, err := open(c, false)
	if err != nil {
		return State{}, err
	}
	defer ns.close()
	return show(c, ns, saved)
}
