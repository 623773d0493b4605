package hostnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// State is what exists of a lab's host network.
type State struct {
	Lab           string     `json:"lab"`
	Namespace     *Namespace `json:"namespace,omitempty"`
	IPForward     bool       `json:"ipForward"`     // in the namespace holding the bridge
	HostIPForward bool       `json:"hostIPForward"` // in the caller's namespace
	Bridge        Link       `json:"bridge"`
	Taps          []Tap      `json:"taps"`
	StaleTaps     []string   `json:"staleTaps,omitempty"` // lab taps of nodes not in the config
	Veth          *Veth      `json:"veth,omitempty"`
	Table         Table      `json:"table"`
	Files         []string   `json:"files,omitempty"`
}

// Namespace is the lab's own network namespace.
type Namespace struct {
	Name    string `json:"name"`
	Exists  bool   `json:"exists"`
	Created bool   `json:"createdByKubelab"` // Remove deletes it only then
}

// Link is one network interface.
type Link struct {
	Name      string         `json:"name"`
	Exists    bool           `json:"exists"`
	Up        bool           `json:"up"`
	Alias     string         `json:"alias,omitempty"`
	Addresses []netip.Prefix `json:"addresses,omitempty"`
}

// Tap is a node's tap device.
type Tap struct {
	Link
	Node     string     `json:"node"`
	Address  netip.Addr `json:"address"`
	Attached bool       `json:"attached"` // enslaved to the lab bridge
	Carrier  bool       `json:"carrier"`  // a process (QEMU) holds it open
}

// Veth links the caller's namespace with the lab namespace.
type Veth struct {
	Host     Link         `json:"host"`
	Lab      Link         `json:"lab"`
	Transfer netip.Prefix `json:"transfer,omitzero"`
	Routes   []string     `json:"routes,omitempty"`
}

// Table is the lab's nftables table as the kernel has it.
type Table struct {
	Name   string `json:"name"`
	Exists bool   `json:"exists"`
	Rules  string `json:"rules,omitempty"` // nft syntax
}

// saved is state.json: what cannot be read back from the kernel.
type saved struct {
	Lab              string       `json:"lab"`
	Namespace        string       `json:"namespace,omitempty"`
	NamespaceCreated bool         `json:"namespaceCreated"`
	Transfer         netip.Prefix `json:"transfer,omitzero"`
	// HostIPForwardWas is net.ipv4.ip_forward of the host before the first
	// Apply; Remove puts it back.
	HostIPForwardWas *bool `json:"hostIPForwardWas,omitempty"`
}

func loadSaved(dir string) (saved, error) {
	var s saved
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("hostnet: read state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("hostnet: %s: %w (remove it to start over; then a namespace kubelab made is no longer deleted by destroy)", filepath.Join(dir, StateFile), err)
	}
	return s, nil
}

func saveState(dir string, s saved) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, StateFile), append(b, '\n'))
}

// writeFile replaces path atomically, so a reader never sees half a file.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("hostnet: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("hostnet: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("hostnet: write %s: %w", path, err)
	}
	return nil
}

// dhcpHosts is a dnsmasq --dhcp-hostsfile in the guide's MAC,IP,name,infinite
// format: the nodes, then the failsafe VM.
func (c Config) dhcpHosts() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# dnsmasq --dhcp-hostsfile for lab %s, written by kubelab hostnet\n", c.Lab)
	nodes := append(c.Nodes[:0:0], c.Nodes...)
	sort.SliceStable(nodes, func(i, j int) bool { return nodes[i].Address.Less(nodes[j].Address) })
	for _, n := range nodes {
		fmt.Fprintf(&b, "%s,%s,%s,infinite\n", n.MAC, n.Address, n.Name)
	}
	if c.Network.FailsafeMAC != "" && c.Network.Failsafe.IsValid() {
		fmt.Fprintf(&b, "%s,%s,failsafe,infinite\n", c.Network.FailsafeMAC, c.Network.Failsafe)
	}
	return b.Bytes()
}

func (c Config) rulesHeader() string {
	where := "the host's network namespace"
	if c.Network.Namespace != "" {
		where = "the host's network namespace (the lab itself is in namespace " + c.Network.Namespace + ")"
	}
	return fmt.Sprintf("# nftables rules of lab %s as applied by kubelab hostnet in %s.\n# Inspect with: nft list table ip %s\n", c.Lab, where, TableName(c.Lab))
}

func linkState(h *netlink.Handle, l netlink.Link, name string) Link {
	out := Link{Name: name}
	if h == nil || l == nil {
		return out
	}
	out.Exists = true
	out.Up = l.Attrs().Flags&net.FlagUp != 0
	out.Alias = l.Attrs().Alias
	out.Addresses = addrs(h, l)
	return out
}

func show(c Config, ns *namespaces, sv saved) (State, error) {
	st := State{Lab: c.Lab, Table: Table{Name: TableName(c.Lab)}}
	get := func(h *netlink.Handle, name string) (netlink.Link, error) {
		if h == nil {
			return nil, nil
		}
		return lookup(h, name)
	}
	if ns.separate {
		st.Namespace = &Namespace{Name: c.Network.Namespace, Exists: ns.labH != nil,
			Created: sv.NamespaceCreated && sv.Namespace == c.Network.Namespace}
	}
	var err error
	if st.HostIPForward, err = readIPForward(ns.host); err != nil {
		return st, fmt.Errorf("hostnet: %w", err)
	}
	st.IPForward = st.HostIPForward
	if ns.separate && ns.labH != nil {
		if st.IPForward, err = readIPForward(ns.lab); err != nil {
			return st, fmt.Errorf("hostnet: %w", err)
		}
	}
	br, err := get(ns.labH, c.Network.Bridge)
	if err != nil {
		return st, fmt.Errorf("hostnet: %w", err)
	}
	st.Bridge = linkState(ns.labH, br, c.Network.Bridge)
	want := map[string]bool{}
	for _, nd := range c.Nodes {
		name := TapName(c.Network.Bridge, nd, c.Network)
		want[name] = true
		l, err := get(ns.labH, name)
		if err != nil {
			return st, fmt.Errorf("hostnet: %w", err)
		}
		t := Tap{Link: linkState(ns.labH, l, name), Node: nd.Name, Address: nd.Address}
		if l != nil {
			t.Attached = br != nil && l.Attrs().MasterIndex == br.Attrs().Index
			t.Carrier = l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
		}
		st.Taps = append(st.Taps, t)
	}
	if ns.labH != nil {
		owned, err := ownedLinks(ns.labH, c.Lab, roleTap)
		if err != nil {
			return st, fmt.Errorf("hostnet: %w", err)
		}
		for _, l := range owned {
			if !want[l.Attrs().Name] {
				st.StaleTaps = append(st.StaleTaps, l.Attrs().Name)
			}
		}
	}
	if ns.separate {
		hostName, labName := vethNames(c.Network.Bridge)
		hl, err := get(ns.hostH, hostName)
		if err != nil {
			return st, fmt.Errorf("hostnet: %w", err)
		}
		ll, err := get(ns.labH, labName)
		if err != nil {
			return st, fmt.Errorf("hostnet: %w", err)
		}
		v := &Veth{Host: linkState(ns.hostH, hl, hostName), Lab: linkState(ns.labH, ll, labName), Transfer: sv.Transfer}
		if hl != nil {
			v.Routes = append(v.Routes, routesOf(ns.hostH, hl)...)
		}
		if ll != nil {
			for _, r := range routesOf(ns.labH, ll) {
				v.Routes = append(v.Routes, r+" (in "+c.Network.Namespace+")")
			}
		}
		st.Veth = v
	}
	chains, ok, err := readTable(ns.nft, TableName(c.Lab))
	if err != nil {
		return st, fmt.Errorf("hostnet: %w", err)
	}
	st.Table.Exists = ok
	if ok {
		st.Table.Rules = renderTable(TableName(c.Lab), chains)
	}
	for _, f := range []string{StateFile, DHCPHostsFile, RulesFile} {
		p := filepath.Join(c.StateDir, f)
		if _, err := os.Stat(p); err == nil {
			st.Files = append(st.Files, p)
		}
	}
	return st, nil
}

// Text is State for people.
func (s State) Text() string {
	var b strings.Builder
	yes := func(v bool, y, n string) string {
		if v {
			return y
		}
		return n
	}
	link := func(l Link) string {
		if !l.Exists {
			return l.Name + " missing"
		}
		var as []string
		for _, a := range l.Addresses {
			as = append(as, a.String())
		}
		out := l.Name + " " + yes(l.Up, "up", "down")
		if len(as) > 0 {
			out += " " + strings.Join(as, ",")
		}
		return out
	}
	fmt.Fprintf(&b, "lab %s\n", s.Lab)
	if s.Namespace != nil {
		fmt.Fprintf(&b, "namespace  %s %s%s\n", s.Namespace.Name, yes(s.Namespace.Exists, "exists", "missing"),
			yes(s.Namespace.Created, " (created by kubelab)", " (not created by kubelab; kept on remove)"))
	}
	fmt.Fprintf(&b, "forwarding lab %s, host %s\n", yes(s.IPForward, "on", "off"), yes(s.HostIPForward, "on", "off"))
	fmt.Fprintf(&b, "bridge     %s\n", link(s.Bridge))
	for _, t := range s.Taps {
		fmt.Fprintf(&b, "tap        %-15s node %s (%s)", t.Name, t.Node, t.Address)
		if t.Exists {
			fmt.Fprintf(&b, " %s, %s, %s\n", yes(t.Up, "up", "down"), yes(t.Attached, "attached", "NOT attached"), yes(t.Carrier, "in use", "no VM"))
		} else {
			b.WriteString(" missing\n")
		}
	}
	for _, t := range s.StaleTaps {
		fmt.Fprintf(&b, "tap        %-15s stale (no such node; apply removes it)\n", t)
	}
	if s.Veth != nil {
		fmt.Fprintf(&b, "veth       %s <-> %s", link(s.Veth.Host), link(s.Veth.Lab))
		if s.Veth.Transfer.IsValid() {
			fmt.Fprintf(&b, " (transfer %s)", s.Veth.Transfer)
		}
		b.WriteString("\n")
		for _, r := range s.Veth.Routes {
			fmt.Fprintf(&b, "route      %s\n", r)
		}
	}
	if s.Table.Exists {
		fmt.Fprintf(&b, "rules      table ip %s:\n", s.Table.Name)
		for _, l := range strings.Split(strings.TrimRight(s.Table.Rules, "\n"), "\n") {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	} else {
		fmt.Fprintf(&b, "rules      table ip %s missing\n", s.Table.Name)
	}
	for _, f := range s.Files {
		fmt.Fprintf(&b, "file       %s\n", f)
	}
	return b.String()
}
