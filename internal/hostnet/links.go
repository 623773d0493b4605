package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Every link kubelab creates carries an interface alias naming its lab and
// role, so a link is only ever changed or deleted by the lab that owns it.
func ownerAlias(lab, role string) string { return "kubelab:" + lab + ":" + role }

const (
	roleBridge = "bridge"
	roleTap    = "tap"
	roleVeth   = "veth"
)

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// lookup returns the link named name, or nil when there is none.
func lookup(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return l, nil
}

// checkOwner refuses links that belong to someone else. adoptUnmarked
// accepts a link without alias: a tap whose alias was not yet set when a
// previous run stopped.
func checkOwner(l netlink.Link, lab, role, wantType string, adoptUnmarked bool) error {
	a := l.Attrs()
	if l.Type() != wantType {
		return fmt.Errorf("link %s exists as a %s, not a %s made by kubelab; remove it or choose another network.bridge", a.Name, l.Type(), wantType)
	}
	switch a.Alias {
	case ownerAlias(lab, role):
		return nil
	case "":
		if adoptUnmarked {
			return nil
		}
	}
	return fmt.Errorf("link %s exists and is not lab %s's (alias %q); remove it or choose another network.bridge", a.Name, lab, a.Alias)
}

// mark sets the alias naming l as lab's role. The kernel ignores an alias
// given when a link is created, so it is always set afterwards.
func mark(h *netlink.Handle, l netlink.Link, lab, role string) error {
	if l.Attrs().Alias == ownerAlias(lab, role) {
		return nil
	}
	if err := h.LinkSetAlias(l, ownerAlias(lab, role)); err != nil {
		return fmt.Errorf("mark %s as lab %s's: %w", l.Attrs().Name, lab, err)
	}
	return nil
}

// fresh reports whether an unmarked link looks like one a previous run
// created and could not mark before it stopped: no addresses and no ports
// other than taps. Anything else someone made and is left alone.
func fresh(h *netlink.Handle, l netlink.Link) bool {
	if len(addrs(h, l)) > 0 {
		return false
	}
	all, err := h.LinkList()
	if err != nil {
		return false
	}
	for _, o := range all {
		if o.Attrs().MasterIndex == l.Attrs().Index && o.Type() != "tuntap" {
			return false
		}
	}
	return true
}

// setAddrs makes want the only addresses of l in each family want uses.
// Stale addresses go first: deleting a primary address also deletes the
// secondaries added after it.
func setAddrs(h *netlink.Handle, l netlink.Link, want []netip.Prefix) error {
	name := l.Attrs().Name
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := h.AddrList(l, fam)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", name, err)
		}
		for _, a := range have {
			p := prefixOf(a.IPNet)
			if contains(want, p) || p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() || !familyUsed(want, p.Addr().Is4()) {
				continue
			}
			if err := h.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove stale address %s from %s: %w", p, name, err)
			}
		}
	}
	for _, p := range want {
		a := &netlink.Addr{IPNet: ipnet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(l, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, name, err)
		}
	}
	return nil
}

func familyUsed(ps []netip.Prefix, v4 bool) bool {
	for _, p := range ps {
		if p.Addr().Is4() == v4 {
			return true
		}
	}
	return false
}

func contains(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func addrs(h *netlink.Handle, l netlink.Link) []netip.Prefix {
	have, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range have {
		p := prefixOf(a.IPNet)
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, p)
	}
	return out
}

func up(h *netlink.Handle, l netlink.Link) error {
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// ensureBridge creates or reuses the lab bridge with the gateway addresses.
func ensureBridge(h *netlink.Handle, lab, name string, gw []netip.Prefix) (netlink.Link, error) {
	l, err := lookup(h, name)
	if err != nil {
		return nil, err
	}
	if l == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s after creating it: %w", name, err)
		}
	} else if err := checkOwner(l, lab, roleBridge, "bridge", fresh(h, l)); err != nil {
		return nil, err
	}
	if err := mark(h, l, lab, roleBridge); err != nil {
		return nil, err
	}
	if err := setAddrs(h, l, gw); err != nil {
		return nil, err
	}
	return l, up(h, l)
}

// ensureTap creates or reuses a persistent tap and attaches it to the
// bridge. A tap is created by ioctl on /dev/net/tun, which makes it in the
// namespace of the calling thread, hence inNS.
func ensureTap(h *netlink.Handle, ns netns.NsHandle, lab, name string, bridge netlink.Link) error {
	l, err := lookup(h, name)
	if err != nil {
		return err
	}
	if l == nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// One queue (QEMU's default tap), no packet info, virtio-net header.
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		}
		if err := inNS(ns, func() error { return netlink.LinkAdd(tap) }); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		if l, err = h.LinkByName(name); err != nil {
			return fmt.Errorf("tap %s after creating it: %w", name, err)
		}
	} else if err := checkOwner(l, lab, roleTap, "tuntap", true); err != nil {
		return err
	}
	if err := mark(h, l, lab, roleTap); err != nil {
		return err
	}
	if l.Attrs().MasterIndex != bridge.Attrs().Index {
		if err := h.LinkSetMaster(l, bridge); err != nil {
			return fmt.Errorf("attach tap %s to bridge %s: %w", name, bridge.Attrs().Name, err)
		}
	}
	return up(h, l)
}

// ownedLinks lists the links in h's namespace marked as lab's role.
func ownedLinks(h *netlink.Handle, lab, role string) ([]netlink.Link, error) {
	all, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		if l.Attrs().Alias == ownerAlias(lab, role) {
			out = append(out, l)
		}
	}
	return out, nil
}

// deleteOwned deletes the link named name if it is lab's.
func deleteOwned(h *netlink.Handle, lab, role, name string) error {
	l, err := lookup(h, name)
	if err != nil || l == nil {
		return err
	}
	wantType := map[string]string{roleBridge: "bridge", roleTap: "tuntap", roleVeth: "veth"}[role]
	if l.Attrs().Alias != ownerAlias(lab, role) {
		// An unmarked link of the right kind that a run made and stopped
		// before marking; see fresh.
		if l.Attrs().Alias != "" || l.Type() != wantType || role != roleTap && !fresh(h, l) {
			return nil
		}
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", role, name, err)
	}
	return nil
}

// ensureVeth links the caller's namespace (hostH) with the lab namespace
// (labH): addresses from the transfer /30, a route to the lab network on
// the host side and a default route on the lab side.
func ensureVeth(hostH, labH *netlink.Handle, labNS netns.NsHandle, lab, hostName, labName string, transfer, cidr netip.Prefix) error {
	hostAddr, labAddr := transferAddrs(transfer)
	hl, err := lookup(hostH, hostName)
	if err != nil {
		return err
	}
	ll, err := lookup(labH, labName)
	if err != nil {
		return err
	}
	if hl != nil {
		if err := checkOwner(hl, lab, roleVeth, "veth", fresh(hostH, hl)); err != nil {
			return err
		}
	}
	if ll != nil && ll.Type() != "veth" {
		return fmt.Errorf("link %s in the lab namespace is a %s, not kubelab's veth; remove it", labName, ll.Type())
	}
	// Half a pair (the lab namespace was recreated, or a run stopped
	// midway) cannot be repaired: start the pair over.
	if (hl == nil) != (ll == nil) || hl != nil && !peers(hl, ll) {
		for h, l := range map[*netlink.Handle]netlink.Link{hostH: hl, labH: ll} {
			if l != nil {
				if err := h.LinkDel(l); err != nil && !isNotFound(err) {
					return fmt.Errorf("delete half veth %s: %w", l.Attrs().Name, err)
				}
			}
		}
		hl, ll = nil, nil
	}
	if hl == nil {
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostName},
			PeerName:      labName,
			PeerNamespace: netlink.NsFd(int(labNS)),
		}
		if err := hostH.LinkAdd(v); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", hostName, labName, err)
		}
		if hl, err = hostH.LinkByName(hostName); err != nil {
			return fmt.Errorf("veth %s after creating it: %w", hostName, err)
		}
		if ll, err = labH.LinkByName(labName); err != nil {
			return fmt.Errorf("veth %s in the lab namespace after creating it: %w", labName, err)
		}
	}
	if err := mark(hostH, hl, lab, roleVeth); err != nil {
		return err
	}
	if err := mark(labH, ll, lab, roleVeth); err != nil {
		return err
	}
	if err := setAddrs(hostH, hl, []netip.Prefix{hostAddr}); err != nil {
		return err
	}
	if err := setAddrs(labH, ll, []netip.Prefix{labAddr}); err != nil {
		return err
	}
	if err := up(hostH, hl); err != nil {
		return err
	}
	if err := up(labH, ll); err != nil {
		return err
	}
	toLab := &netlink.Route{LinkIndex: hl.Attrs().Index, Dst: ipnet(cidr.Masked()), Gw: labAddr.Addr().AsSlice()}
	if err := hostH.RouteReplace(toLab); err != nil {
		return fmt.Errorf("route %s via %s dev %s: %w", cidr.Masked(), labAddr.Addr(), hostName, err)
	}
	// Routes to a lab network this lab no longer has (its CIDR changed).
	rs, err := hostH.RouteList(hl, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes via %s: %w", hostName, err)
	}
	for _, r := range rs {
		if r.Gw != nil && r.Dst != nil && prefixOf(r.Dst) != cidr.Masked() {
			if err := hostH.RouteDel(&r); err != nil {
				return fmt.Errorf("delete stale route %s via %s: %w", r.Dst, hostName, err)
			}
		}
	}
	def := &netlink.Route{LinkIndex: ll.Attrs().Index, Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0")), Gw: hostAddr.Addr().AsSlice()}
	if err := labH.RouteReplace(def); err != nil {
		return fmt.Errorf("default route via %s dev %s in the lab namespace: %w", hostAddr.Addr(), labName, err)
	}
	return nil
}

// peers reports whether hl's peer is ll: a veth end's IFLA_LINK is its
// peer's index, which is unique within the peer's namespace.
func peers(hl, ll netlink.Link) bool {
	return ll != nil && hl.Attrs().ParentIndex == ll.Attrs().Index && ll.Attrs().ParentIndex == hl.Attrs().Index
}

// routesOf lists the IPv4 routes through l, as "DST via GW".
func routesOf(h *netlink.Handle, l netlink.Link) []string {
	rs, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range rs {
		if r.Gw == nil {
			continue
		}
		dst := "default"
		if r.Dst != nil && prefixOf(r.Dst).Bits() != 0 {
			dst = prefixOf(r.Dst).String()
		}
		out = append(out, fmt.Sprintf("%s via %s dev %s", dst, r.Gw, l.Attrs().Name))
	}
	return out
}

// hostAddrsOverlap reports whether any address in h's namespace lies in p.
func hostAddrsOverlap(h *netlink.Handle, p netip.Prefix, except string) (bool, error) {
	all, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range all {
		q := prefixOf(a.IPNet)
		if strings.EqualFold(a.Label, except) {
			continue
		}
		if p.Overlaps(q) {
			return true, nil
		}
	}
	return false, nil
}
