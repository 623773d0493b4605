// Package ipmath does the little address arithmetic the plan needs:
// the n-th address of a network, its last address, an address's offset,
// and the n-th subnet of a given size.
package ipmath

import (
	"fmt"
	"math/big"
	"net/netip"
)

// Nth returns the address n places after p's network address.
func Nth(p netip.Prefix, n uint64) (netip.Addr, error) {
	base := toInt(p.Masked().Addr())
	v := new(big.Int).Add(base, new(big.Int).SetUint64(n))
	a := fromInt(v, p.Addr().Is4())
	if !a.IsValid() || !p.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%s has no address at offset %d", p, n)
	}
	return a, nil
}

// Last returns the last address of p (the broadcast address for IPv4).
func Last(p netip.Prefix) netip.Addr {
	bits := p.Addr().BitLen()
	size := new(big.Int).Lsh(big.NewInt(1), uint(bits-p.Bits()))
	v := new(big.Int).Add(toInt(p.Masked().Addr()), size.Sub(size, big.NewInt(1)))
	return fromInt(v, p.Addr().Is4())
}

// Offset returns how many places a lies after p's network address; a must
// be inside p.
func Offset(p netip.Prefix, a netip.Addr) uint64 {
	return new(big.Int).Sub(toInt(a), toInt(p.Masked().Addr())).Uint64()
}

// Subnet returns the n-th subnet of length bits inside p.
func Subnet(p netip.Prefix, bits int, n uint64) (netip.Prefix, error) {
	if bits < p.Bits() || bits > p.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("cannot cut /%d subnets out of %s", bits, p)
	}
	if span := bits - p.Bits(); span < 64 && n >= 1<<span {
		return netip.Prefix{}, fmt.Errorf("%s holds only %d /%d subnets; subnet %d does not fit", p, uint64(1)<<span, bits, n)
	}
	step := new(big.Int).Lsh(new(big.Int).SetUint64(n), uint(p.Addr().BitLen()-bits))
	a := fromInt(new(big.Int).Add(toInt(p.Masked().Addr()), step), p.Addr().Is4())
	return netip.PrefixFrom(a, bits), nil
}

func toInt(a netip.Addr) *big.Int {
	b := a.AsSlice()
	return new(big.Int).SetBytes(b)
}

func fromInt(v *big.Int, is4 bool) netip.Addr {
	size := 16
	if is4 {
		size = 4
	}
	if v.Sign() < 0 || v.BitLen() > size*8 {
		return netip.Addr{}
	}
	buf := make([]byte, size)
	v.FillBytes(buf)
	a, _ := netip.AddrFromSlice(buf)
	return a
}
