package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// certSpec is what the plan needs of one certificate. Everything else
// (serial, dates, key) is free to differ between runs.
type certSpec struct {
	Name         string
	CA           string // issuing CA's name; empty for a CA, which signs itself
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []netip.Addr
	Usages       []x509.ExtKeyUsage // empty for a CA
}

func (s certSpec) isCA() bool { return s.CA == "" }

// backdate covers clocks that lag the host a little (a VM that just booted
// under TCG, a host that stepped its clock).
const backdate = time.Hour

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// issue signs a certificate for s and pub. parent and signer are nil for a CA.
func issue(s certSpec, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer, now time.Time, validity time.Duration) (*x509.Certificate, []byte, error) {
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	serial.Add(serial, big.NewInt(1)) // never zero
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("subject key id: %w", err)
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.CommonName, Organization: s.Organization},
		NotBefore:             now.Add(-backdate).UTC().Truncate(time.Second),
		NotAfter:              now.Add(validity).UTC().Truncate(time.Second),
		SubjectKeyId:          ski,
		DNSNames:              s.DNSNames,
		BasicConstraintsValid: true,
	}
	for _, ip := range s.IPs {
		t.IPAddresses = append(t.IPAddresses, net.IP(ip.AsSlice()))
	}
	if s.isCA() {
		t.IsCA = true
		t.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
		parent = t
	} else {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		if _, ok := pub.(*rsa.PublicKey); ok {
			t.KeyUsage |= x509.KeyUsageKeyEncipherment // RSA key exchange in TLS 1.2
		}
		t.ExtKeyUsage = s.Usages
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, pub, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse what was signed: %w", err)
	}
	return cert, encodeCert(der), nil
}

// mismatch says why an existing certificate no longer serves s, or "" when
// it does. ca is the issuing CA's certificate (nil for a CA).
func mismatch(cert *x509.Certificate, s certSpec, ca *x509.Certificate, now time.Time) string {
	var why []string
	if now.After(cert.NotAfter) {
		why = append(why, "expired "+cert.NotAfter.UTC().Format(time.DateOnly))
	}
	if cert.IsCA != s.isCA() {
		why = append(why, fmt.Sprintf("IsCA is %v", cert.IsCA))
	}
	if s.isCA() {
		return strings.Join(why, "; ")
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		why = append(why, "not signed by the current "+s.CA)
	}
	if cert.Subject.CommonName != s.CommonName {
		why = append(why, fmt.Sprintf("CN %q, want %q", cert.Subject.CommonName, s.CommonName))
	}
	if !sameSet(cert.Subject.Organization, s.Organization) {
		why = append(why, fmt.Sprintf("O %q, want %q", cert.Subject.Organization, s.Organization))
	}
	if !sameSet(cert.DNSNames, s.DNSNames) {
		why = append(why, fmt.Sprintf("DNS SANs %v, want %v", cert.DNSNames, s.DNSNames))
	}
	if have, want := ipStrings(cert.IPAddresses), addrStrings(s.IPs); !sameSet(have, want) {
		why = append(why, fmt.Sprintf("IP SANs %v, want %v", have, want))
	}
	if !sameSet(ekuStrings(cert.ExtKeyUsage), ekuStrings(s.Usages)) {
		why = append(why, fmt.Sprintf("extended key usages %v, want %v", ekuStrings(cert.ExtKeyUsage), ekuStrings(s.Usages)))
	}
	return strings.Join(why, "; ")
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap().String())
		} else {
			out = append(out, ip.String())
		}
	}
	return out
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func ekuStrings(us []x509.ExtKeyUsage) []string {
	out := make([]string, 0, len(us))
	for _, u := range us {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			out = append(out, "server")
		case x509.ExtKeyUsageClientAuth:
			out = append(out, "client")
		default:
			out = append(out, fmt.Sprintf("eku-%d", u))
		}
	}
	return out
}
