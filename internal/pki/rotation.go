package pki

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// RotationFile records a CA rotation in progress in the cluster's PKI
// directory. Its phase says what the nodes are given:
//
//	trust-both  the old CA signs; every trust point holds old and new
//	reissue     the new CA signs (every leaf of it is re-issued); both trusted
//	trust-new   the new CA signs and alone is trusted
//
// FinishRotation then makes the new CA the cluster's CA and removes the
// record. The new CA's files are <ca>.next.crt and <ca>.next.key.
const RotationFile = "ca-rotation.json"

// Rotation phases, in order.
const (
	RotationTrustBoth = "trust-both"
	RotationReissue   = "reissue"
	RotationTrustNew  = "trust-new"
)

var rotationPhases = []string{RotationTrustBoth, RotationReissue, RotationTrustNew}

// Rotation is a CA rotation in progress.
type Rotation struct {
	CA      string    `json:"ca"` // EtcdCA, KubernetesCA, FrontProxyCA or AppsCA
	Phase   string    `json:"phase"`
	Started time.Time `json:"started"`
}

// CAs by the names people use for them (kubelab certs rotate-ca --ca).
var caAliases = map[string]string{"kubernetes": KubernetesCA, "etcd": EtcdCA, "front-proxy": FrontProxyCA, "apps": AppsCA}

// CAByAlias maps kubernetes, etcd, front-proxy or apps to the CA's name.
func CAByAlias(alias string) (string, error) {
	if name, ok := caAliases[alias]; ok {
		return name, nil
	}
	return "", fmt.Errorf("unknown CA %q; use kubernetes, etcd, front-proxy or apps", alias)
}

// AliasOf is the inverse of CAByAlias.
func AliasOf(ca string) string {
	for a, n := range caAliases {
		if n == ca {
			return a
		}
	}
	return ca
}

func nextName(ca string) string { return ca + ".next" }

// ReadRotation returns the rotation in progress, or nil.
func ReadRotation(pkiDir string) (*Rotation, error) {
	path := filepath.Join(pkiDir, RotationFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Rotation
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if AliasOf(r.CA) == r.CA || phaseIndex(r.Phase) < 0 {
		return nil, fmt.Errorf("%s: CA %q in phase %q is not a rotation kubelab knows", path, r.CA, r.Phase)
	}
	return &r, nil
}

func phaseIndex(p string) int {
	for i, q := range rotationPhases {
		if q == p {
			return i
		}
	}
	return -1
}

func writeRotation(pkiDir string, r Rotation) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(pkiDir, RotationFile), append(data, '\n'), publicMode)
}

// StartRotation makes a new key and certificate for the CA ca and records
// the rotation in phase trust-both. It refuses while any rotation is in
// progress.
func StartRotation(pkiDir, ca string, opts Options) error {
	if AliasOf(ca) == ca {
		return fmt.Errorf("%s is not a CA kubelab rotates", ca)
	}
	if r, err := ReadRotation(pkiDir); err != nil {
		return err
	} else if r != nil {
		return fmt.Errorf("a rotation of the %s CA is half done (phase %s, started %s); run kubelab certs rotate-ca --ca %s to finish it first",
			AliasOf(r.CA), r.Phase, r.Started.UTC().Format(time.RFC3339), AliasOf(r.CA))
	}
	if opts.CAValidity == 0 {
		opts.CAValidity = DefaultCAValidity
	}
	if opts.KeyAlgorithm == "" {
		opts.KeyAlgorithm = ECDSAP256
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	cur, err := parseCert(mustRead(filepath.Join(pkiDir, ca+".crt")))
	if err != nil {
		return fmt.Errorf("the current %s CA: %w", ca, err)
	}
	now := opts.Now()
	key, err := generateKey(opts.KeyAlgorithm)
	if err != nil {
		return err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	// The same organisation; the common name says which generation this is.
	s := certSpec{Name: nextName(ca), CommonName: baseCN(cur.Subject.CommonName) + " " + now.UTC().Format("2006-01-02T15:04"),
		Organization: cur.Subject.Organization}
	_, certPEM, err := issue(s, key.Public(), nil, key, now, opts.CAValidity)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(pkiDir, nextName(ca)+".key"), keyPEM, keyMode); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(pkiDir, nextName(ca)+".crt"), certPEM, publicMode); err != nil {
		return err
	}
	return writeRotation(pkiDir, Rotation{CA: ca, Phase: RotationTrustBoth, Started: now.UTC().Truncate(time.Second)})
}

// baseCN drops the generation a rotation appended ("kubernetes-ca 2026-...").
func baseCN(cn string) string {
	base, _, _ := strings.Cut(cn, " ")
	return base
}

func mustRead(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

// AdvanceRotation moves the rotation in progress to its next phase.
func AdvanceRotation(pkiDir string) (Rotation, error) {
	r, err := ReadRotation(pkiDir)
	if err != nil {
		return Rotation{}, err
	}
	if r == nil {
		return Rotation{}, fmt.Errorf("no CA rotation in progress")
	}
	i := phaseIndex(r.Phase)
	if i == len(rotationPhases)-1 {
		return *r, fmt.Errorf("the rotation of the %s CA is in its last phase; finish it", AliasOf(r.CA))
	}
	r.Phase = rotationPhases[i+1]
	return *r, writeRotation(pkiDir, *r)
}

// FinishRotation makes the new CA the cluster's CA (its files replace the
// old ones), then removes the record and the new CA's extra files. Every
// step can be run again after a crash.
func FinishRotation(pkiDir string) error {
	r, err := ReadRotation(pkiDir)
	if err != nil {
		return err
	}
	if r == nil || r.Phase != RotationTrustNew {
		return fmt.Errorf("no CA rotation in phase %s to finish", RotationTrustNew)
	}
	next := filepath.Join(pkiDir, nextName(r.CA))
	cur := filepath.Join(pkiDir, r.CA)
	for _, ext := range []string{".key", ".crt"} {
		mode := os.FileMode(keyMode)
		if ext == ".crt" {
			mode = publicMode
		}
		data, err := os.ReadFile(next + ext)
		if err != nil {
			return fmt.Errorf("the new %s CA: %w", r.CA, err)
		}
		if err := writeFile(cur+ext, data, mode); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(pkiDir, RotationFile)); err != nil {
		return err
	}
	for _, ext := range []string{".key", ".crt"} {
		if err := os.Remove(next + ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// rotatingCA loads both generations of the CA under rotation: the one
// that signs in this phase and the certificates every trust point holds.
func rotatingCA(dir string, s certSpec, r *Rotation, opts Options, now time.Time, rep *Report) (signer *credential, trust []byte, err error) {
	next, err := loadCA(dir, certSpec{Name: nextName(s.Name), CommonName: s.CommonName, Organization: s.Organization})
	if err != nil {
		return nil, nil, fmt.Errorf("the rotation of %s (phase %s) lacks its new CA: %w; remove %s to abandon the rotation",
			s.Name, r.Phase, err, filepath.Join(dir, RotationFile))
	}
	next.spec = s // it signs what s signs
	if r.Phase == RotationTrustNew {
		return next, next.certPEM, nil
	}
	old, err := ensureCert(dir, s, nil, opts, now, rep)
	if err != nil {
		return nil, nil, err
	}
	trust = append(append([]byte{}, old.certPEM...), next.certPEM...)
	if r.Phase == RotationTrustBoth {
		return old, trust, nil
	}
	return next, trust, nil
}

// loadCA reads an existing CA pair without creating anything.
func loadCA(dir string, s certSpec) (*credential, error) {
	keyPEM, err := os.ReadFile(filepath.Join(dir, s.Name+".key"))
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, s.Name+".crt"))
	if err != nil {
		return nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeyEqual(cert, key) || !cert.IsCA {
		return nil, fmt.Errorf("%s.crt is not a CA certificate of %s.key", s.Name, s.Name)
	}
	return &credential{spec: s, cert: cert, certPEM: certPEM, keyPEM: keyPEM, key: key}, nil
}
