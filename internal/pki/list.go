package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// CertInfo describes one certificate for people (kubelab certs).
type CertInfo struct {
	Cluster      string    `json:"cluster"`
	Name         string    `json:"name"`
	CommonName   string    `json:"commonName"`
	Organization []string  `json:"organization,omitempty"`
	Issuer       string    `json:"issuer"` // issuing CA's name in this cluster, or the issuer's CN
	IsCA         bool      `json:"isCA"`
	Usages       []string  `json:"usages,omitempty"` // server, client
	DNSNames     []string  `json:"dnsNames,omitempty"`
	IPAddresses  []string  `json:"ipAddresses,omitempty"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
}

// DaysLeft is the number of whole days until the certificate expires
// (negative once it has).
func (i CertInfo) DaysLeft(now time.Time) int {
	return int(i.NotAfter.Sub(now).Hours() / 24)
}

func certInfo(cluster, name, issuer string, c *x509.Certificate) CertInfo {
	return CertInfo{
		Cluster:      cluster,
		Name:         name,
		CommonName:   c.Subject.CommonName,
		Organization: c.Subject.Organization,
		Issuer:       issuer,
		IsCA:         c.IsCA,
		Usages:       ekuStrings(c.ExtKeyUsage),
		DNSNames:     c.DNSNames,
		IPAddresses:  ipStrings(c.IPAddresses),
		NotBefore:    c.NotBefore,
		NotAfter:     c.NotAfter,
	}
}

// Certs describes every certificate of the cluster in Names order.
func (cl *Cluster) Certs() []CertInfo {
	out := make([]CertInfo, 0, len(cl.names))
	for _, n := range cl.names {
		cr := cl.creds[n]
		issuer := cr.spec.CA
		if issuer == "" {
			issuer = n
		}
		out = append(out, certInfo(cl.Name, n, issuer, cr.cert))
	}
	return out
}

// List reads the certificates that exist on disk for cluster, without
// creating anything: CAs first, then the rest by name. When the cluster has
// no PKI directory yet the error wraps fs.ErrNotExist.
func List(labDir, cluster string) ([]CertInfo, error) {
	dir := Dir(labDir, cluster)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("certificates of cluster %s: %w", cluster, err)
	}
	type found struct {
		name string
		cert *x509.Certificate
	}
	var certs []found
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".crt") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		c, err := parseCert(data)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rel, _ := filepath.Rel(dir, path)
		certs = append(certs, found{strings.TrimSuffix(filepath.ToSlash(rel), ".crt"), c})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("certificates of cluster %s: %w", cluster, err)
	}
	slices.SortStableFunc(certs, func(a, b found) int {
		if a.cert.IsCA != b.cert.IsCA {
			if a.cert.IsCA {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	out := make([]CertInfo, 0, len(certs))
	for _, f := range certs {
		issuer := f.cert.Issuer.CommonName
		for _, ca := range certs {
			if ca.cert.IsCA && len(ca.cert.SubjectKeyId) > 0 && bytes.Equal(ca.cert.SubjectKeyId, f.cert.AuthorityKeyId) {
				issuer = ca.name
				break
			}
		}
		if f.cert.IsCA && len(f.cert.AuthorityKeyId) == 0 {
			issuer = f.name // self-signed without an AKI
		}
		out = append(out, certInfo(cluster, f.name, issuer, f.cert))
	}
	return out, nil
}
