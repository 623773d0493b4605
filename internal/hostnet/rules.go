package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kubelab/kubelab/internal/plan"
)

// chainSpec is one chain of the lab's table: a base chain when hook is set,
// a regular chain (a jump target) otherwise.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	policy   *nftables.ChainPolicy
	rules    [][]expr.Any
}

// desiredChains are the lab's rules. labSide is the interface through which
// the host reaches the lab network: the bridge, or the veth to the lab
// namespace.
//
//	forwards     the port forwards (DNAT), shared by the two entry points
//	prerouting   packets from outside the lab to one of the host's addresses
//	output       packets the host sends to one of its own non-loopback addresses
//	postrouting  masquerade the lab network leaving through anything but labSide
//	forward      accept forwarding to and from the lab network
func desiredChains(cidr netip.Prefix, labSide string, fwds []plan.Forward) ([]chainSpec, error) {
	accept := nftables.ChainPolicyAccept
	var forwards [][]expr.Any
	for _, f := range fwds {
		r, err := forwardRule(cidr, f)
		if err != nil {
			return nil, err
		}
		forwards = append(forwards, r)
	}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	return []chainSpec{
		{name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward,
			priority: nftables.ChainPriorityFilter, policy: &accept,
			rules: [][]expr.Any{
				cat(matchPrefix(12, expr.CmpOpEq, cidr), verdict(expr.VerdictAccept, "")),
				cat(matchPrefix(16, expr.CmpOpEq, cidr), verdict(expr.VerdictAccept, "")),
			}},
		{name: "forwards", rules: forwards},
		{name: "output", typ: nftables.ChainTypeNAT, hook: nftables.ChainHookOutput,
			priority: nftables.ChainPriorityNATDest, policy: &accept,
			rules: [][]expr.Any{
				cat(matchPrefix(16, expr.CmpOpNeq, loopback), fibDaddrLocal(), verdict(expr.VerdictJump, "forwards")),
			}},
		{name: "postrouting", typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPostrouting,
			priority: nftables.ChainPriorityNATSource, policy: &accept,
			rules: [][]expr.Any{
				cat(matchPrefix(12, expr.CmpOpEq, cidr), matchPrefix(16, expr.CmpOpNeq, cidr),
					matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, labSide), []expr.Any{&expr.Masq{}}),
			}},
		{name: "prerouting", typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPrerouting,
			priority: nftables.ChainPriorityNATDest, policy: &accept,
			rules: [][]expr.Any{
				cat(matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpNeq, labSide), fibDaddrLocal(), verdict(expr.VerdictJump, "forwards")),
			}},
	}, nil
}

// forwardRule is "tcp dport HOST dnat to TARGET:PORT"; a range forwards each
// port to the same port on the target, so it must not be shifted.
func forwardRule(cidr netip.Prefix, f plan.Forward) ([]expr.Any, error) {
	what := fmt.Sprintf("forward %s %d-%d -> %s:%d-%d", f.Purpose, f.HostFrom, f.HostTo, f.Target, f.TargetFrom, f.TargetTo)
	switch {
	case !f.Target.Is4() || !cidr.Contains(f.Target):
		return nil, fmt.Errorf("%s: target is not an IPv4 address in the lab network %s", what, cidr)
	case f.HostFrom < 1 || f.HostTo > 65535 || f.HostTo < f.HostFrom || f.TargetFrom < 1 || f.TargetTo > 65535 || f.TargetTo < f.TargetFrom:
		return nil, fmt.Errorf("%s: ports out of range", what)
	case f.HostTo-f.HostFrom != f.TargetTo-f.TargetFrom:
		return nil, fmt.Errorf("%s: host and target ranges differ in size", what)
	case f.HostTo != f.HostFrom && f.HostFrom != f.TargetFrom:
		return nil, fmt.Errorf("%s: a port range is forwarded to the same ports only", what)
	}
	r := matchTCPDport(uint16(f.HostFrom), uint16(f.HostTo))
	addr := f.Target.As4()
	r = append(r, &expr.Immediate{Register: 1, Data: addr[:]})
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}
	if f.HostFrom == f.HostTo {
		r = append(r, &expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(f.TargetFrom))})
		nat.RegProtoMin = 2
		nat.Specified = true
	}
	return append(r, nat), nil
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func verdict(kind expr.VerdictKind, chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: kind, Chain: chain}}
}

// ifnameData is an interface name as the kernel compares it: IFNAMSIZ bytes,
// NUL padded.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIfname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameData(name)},
	}
}

// matchPrefix compares the IPv4 source (offset 12) or destination (16)
// address with p.
func matchPrefix(offset uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}})
	}
	a := p.Masked().Addr().As4()
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: a[:]})
}

func matchTCPDport(from, to uint16) []expr.Any {
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	if from == to {
		return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(from)})
	}
	return append(out, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binaryutil.BigEndian.PutUint16(from), ToData: binaryutil.BigEndian.PutUint16(to)})
}

func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// replaceTable swaps the lab's table for chains in one netlink batch: the
// kernel applies it as one transaction, so there is never a moment with
// half the rules or none.
func replaceTable(c *nftables.Conn, name string, chains []chainSpec) error {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyIPv4}
	c.AddTable(t) // no-op when it exists; makes the delete below valid
	c.DelTable(t)
	c.AddTable(t)
	for _, cs := range chains {
		ch := c.AddChain(&nftables.Chain{Name: cs.name, Table: t, Type: cs.typ,
			Hooknum: cs.hook, Priority: cs.priority, Policy: cs.policy})
		for _, r := range cs.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply nftables table ip %s: %w", name, err)
	}
	return nil
}

// deleteTable removes the lab's table if it exists.
func deleteTable(c *nftables.Conn, name string) error {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table ip %s: %w", name, err)
	}
	return nil
}

// readTable reads the lab's table back from the kernel; ok is false when it
// does not exist.
func readTable(c *nftables.Conn, name string) (chains []chainSpec, ok bool, err error) {
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyIPv4)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("list nftables table ip %s: %w", name, err)
	}
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, true, fmt.Errorf("list chains of ip %s: %w", name, err)
	}
	for _, ch := range all {
		if ch.Table.Name != name {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, true, fmt.Errorf("list rules of ip %s %s: %w", name, ch.Name, err)
		}
		cs := chainSpec{name: ch.Name, typ: ch.Type, hook: ch.Hooknum, priority: ch.Priority, policy: ch.Policy}
		for _, r := range rules {
			cs.rules = append(cs.rules, r.Exprs)
		}
		chains = append(chains, cs)
	}
	sort.Slice(chains, func(i, j int) bool { return chains[i].name < chains[j].name })
	return chains, true, nil
}

// listTables names the tables of family ip in the namespace of c.
func listTables(c *nftables.Conn) ([]string, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	sort.Strings(out)
	return out, nil
}

var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
	*nftables.ChainHookForward: "forward", *nftables.ChainHookOutput: "output",
	*nftables.ChainHookPostrouting: "postrouting",
}

// renderTable lists a table in nft's syntax. Desired and kernel-read chains
// go through the same code, so equal text means equal rules.
func renderTable(name string, chains []chainSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n", name)
	for i, cs := range chains {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", cs.name)
		if cs.hook != nil {
			prio := 0
			if cs.priority != nil {
				prio = int(*cs.priority)
			}
			policy := "accept"
			if cs.policy != nil && *cs.policy == nftables.ChainPolicyDrop {
				policy = "drop"
			}
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy %s;\n", cs.typ, hookNames[*cs.hook], prio, policy)
		}
		for _, r := range cs.rules {
			fmt.Fprintf(&b, "\t\t%s\n", renderRule(r))
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// operand is what a register holds while a rule is rendered.
type operand struct {
	kind string // iifname, oifname, l4proto, ip, port, addrtype, raw
	text string // left-hand side as nft writes it
	bits int    // prefix length after a bitwise mask, 0 if none
}

// renderRule writes the expressions kubelab generates the way nft lists
// them; anything else is shown by its Go type so nothing is hidden.
func renderRule(exprs []expr.Any) string {
	regs := map[uint32]operand{}
	imm := map[uint32][]byte{}
	var out []string
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			switch e.Key {
			case expr.MetaKeyIIFNAME:
				regs[e.Register] = operand{kind: "ifname", text: "iifname"}
			case expr.MetaKeyOIFNAME:
				regs[e.Register] = operand{kind: "ifname", text: "oifname"}
			case expr.MetaKeyL4PROTO:
				regs[e.Register] = operand{kind: "l4proto", text: "meta l4proto"}
			default:
				regs[e.Register] = operand{kind: "raw", text: fmt.Sprintf("meta key %d", e.Key)}
			}
		case *expr.Payload:
			op := operand{kind: "raw", text: fmt.Sprintf("@base%d,%d,%d", e.Base, e.Offset*8, e.Len*8)}
			switch {
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12 && e.Len == 4:
				op = operand{kind: "ip", text: "ip saddr"}
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16 && e.Len == 4:
				op = operand{kind: "ip", text: "ip daddr"}
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 0 && e.Len == 2:
				op = operand{kind: "port", text: "th sport"}
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				op = operand{kind: "port", text: "th dport"}
			}
			regs[e.DestRegister] = op
		case *expr.Bitwise:
			op := regs[e.SourceRegister]
			if op.kind == "ip" && len(e.Mask) == 4 {
				op.bits = maskBits(binary.BigEndian.Uint32(e.Mask))
			} else {
				op.kind, op.text = "raw", fmt.Sprintf("%s & 0x%x", op.text, e.Mask)
			}
			regs[e.DestRegister] = op
		case *expr.Fib:
			if e.ResultADDRTYPE && e.FlagDADDR {
				regs[e.Register] = operand{kind: "addrtype", text: "fib daddr type"}
			} else {
				regs[e.Register] = operand{kind: "raw", text: fmt.Sprintf("fib %+v", *e)}
			}
		case *expr.Cmp:
			op := regs[e.Register]
			out = append(out, fmt.Sprintf("%s %s%s", op.text, cmpOp(e.Op), formatValue(op, e.Data)))
		case *expr.Range:
			op := regs[e.Register]
			out = append(out, fmt.Sprintf("%s %s%s-%s", op.text, cmpOp(e.Op), formatValue(op, e.FromData), formatValue(op, e.ToData)))
		case *expr.Immediate:
			imm[e.Register] = e.Data
		case *expr.NAT:
			kind := "dnat"
			if e.Type == expr.NATTypeSourceNAT {
				kind = "snat"
			}
			to := ""
			if a, ok := netip.AddrFromSlice(imm[e.RegAddrMin]); ok && e.RegAddrMin != 0 {
				to = a.String()
			}
			if p := imm[e.RegProtoMin]; e.RegProtoMin != 0 && len(p) == 2 {
				to += fmt.Sprintf(":%d", binary.BigEndian.Uint16(p))
			}
			out = append(out, kind+" to "+to)
		case *expr.Masq:
			out = append(out, "masquerade")
		case *expr.Counter:
			out = append(out, "counter")
		case *expr.Verdict:
			out = append(out, verdictText(e))
		default:
			out = append(out, fmt.Sprintf("<%T>", e))
		}
	}
	return strings.Join(out, " ")
}

func cmpOp(op expr.CmpOp) string {
	switch op {
	case expr.CmpOpEq:
		return ""
	case expr.CmpOpNeq:
		return "!= "
	case expr.CmpOpLt:
		return "< "
	case expr.CmpOpLte:
		return "<= "
	case expr.CmpOpGt:
		return "> "
	case expr.CmpOpGte:
		return ">= "
	}
	return fmt.Sprintf("op%d ", op)
}

func formatValue(op operand, data []byte) string {
	switch op.kind {
	case "ifname":
		return fmt.Sprintf("%q", strings.TrimRight(string(data), "\x00"))
	case "l4proto":
		if len(data) == 1 {
			switch data[0] {
			case unix.IPPROTO_TCP:
				return "tcp"
			case unix.IPPROTO_UDP:
				return "udp"
			}
		}
	case "ip":
		if a, ok := netip.AddrFromSlice(data); ok {
			if op.bits > 0 {
				return netip.PrefixFrom(a, op.bits).String()
			}
			return a.String()
		}
	case "port":
		if len(data) == 2 {
			return fmt.Sprint(binary.BigEndian.Uint16(data))
		}
	case "addrtype":
		if len(data) == 4 && binaryutil.NativeEndian.Uint32(data) == unix.RTN_LOCAL {
			return "local"
		}
	}
	return fmt.Sprintf("0x%x", data)
}

func maskBits(m uint32) int {
	n := 0
	for m&0x80000000 != 0 {
		n++
		m <<= 1
	}
	return n
}

func verdictText(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}
