package pki

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/plan"
)

// Default lifetimes: CAs outlive any lab, leaves are re-issued with their
// keys when they expire.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// Options tune Ensure. The zero value gives ECDSA P-256 keys, 10-year CAs,
// 1-year leaves and the default kubeconfig servers.
type Options struct {
	KeyAlgorithm string        // ECDSAP256 (default) or RSA2048; used only for new keys
	CAValidity   time.Duration // default DefaultCAValidity
	LeafValidity time.Duration // default DefaultLeafValidity
	// ComponentServer is the API server URL in the component and kubelet
	// kubeconfigs; default https://<plan.Cluster.APIServer>.
	ComponentServer string
	// AdminServer is the URL in the admin and super-admin kubeconfigs, which
	// are used from the host; default https://127.0.0.1:<APIHostPort>.
	AdminServer string
	Now         func() time.Time // default time.Now; tests move the clock
	// Renew names leaf certificates to re-issue now although they still
	// serve (kubelab certs renew). CAs cannot be renewed this way.
	Renew map[string]bool
	// NewKeys makes renewed certificates get new private keys instead of
	// keeping their existing ones.
	NewKeys bool
}

func (o Options) withDefaults(c plan.Cluster) Options {
	if o.KeyAlgorithm == "" {
		o.KeyAlgorithm = ECDSAP256
	}
	if o.CAValidity == 0 {
		o.CAValidity = DefaultCAValidity
	}
	if o.LeafValidity == 0 {
		o.LeafValidity = DefaultLeafValidity
	}
	if o.ComponentServer == "" && c.APIServer.IsValid() {
		o.ComponentServer = "https://" + c.APIServer.String()
	}
	if o.AdminServer == "" {
		o.AdminServer = fmt.Sprintf("https://127.0.0.1:%d", c.APIHostPort)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Actions a Change reports.
const (
	Created  = "created"  // new key and certificate (or key pair, or kubeconfig)
	Issued   = "issued"   // new certificate for a key that was already on disk
	Reissued = "reissued" // certificate replaced, same key; Reason says why
	Renewed  = "renewed"  // re-issued on request (Options.Renew), same or new key
	Updated  = "updated"  // kubeconfig rewritten; Reason says why
	Chmod    = "chmod"    // secret file permissions tightened to 0600
)

// Change is one thing Ensure did to the disk.
type Change struct {
	Name   string `json:"name"` // credential or kubeconfig name
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
}

// Report lists what Ensure changed; empty when everything was reused.
type Report struct {
	Cluster string   `json:"cluster"`
	Changes []Change `json:"changes"`
	// Unused lists files under the PKI directory the plan no longer needs
	// (e.g. of a removed node), relative to it. They are left in place.
	Unused []string `json:"unused,omitempty"`
}

func (r *Report) add(name, action, reason string) {
	r.Changes = append(r.Changes, Change{Name: name, Action: action, Reason: reason})
}

// String is one line per change, for progress output.
func (r Report) String() string {
	var b strings.Builder
	if len(r.Changes) == 0 {
		fmt.Fprintf(&b, "pki %s: all credentials reused\n", r.Cluster)
	}
	for _, c := range r.Changes {
		fmt.Fprintf(&b, "pki %s: %s %s", r.Cluster, c.Action, c.Name)
		if c.Reason != "" {
			fmt.Fprintf(&b, " (%s)", c.Reason)
		}
		b.WriteByte('\n')
	}
	for _, u := range r.Unused {
		fmt.Fprintf(&b, "pki %s: %s is no longer needed by the plan (left in place)\n", r.Cluster, u)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Dir is where a cluster's PKI lives inside the lab directory.
func Dir(labDir, cluster string) string {
	return filepath.Join(labDir, "clusters", cluster, "pki")
}

// Cluster is a cluster's complete set of credentials, in memory.
type Cluster struct {
	Lab  string
	Name string
	Dir  string // Dir(labDir, Name)

	names       []string // certificates in requiredCerts order
	creds       map[string]*credential
	saKey       []byte
	saPub       []byte
	kcNames     []string
	kubeconfigs map[string][]byte
	encryption  []byte // EncryptionConfigFile
	// trust holds what nodes trust for a CA under rotation (both
	// generations, or the new one); rotation is that rotation, or nil.
	trust    map[string][]byte
	rotation *Rotation
}

type credential struct {
	spec    certSpec
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
	key     crypto.Signer
}

// Ensure makes sure every credential the plan needs for cluster c exists
// under Dir(labDir, c.Name) and returns them all. Existing keys and
// certificates are reused byte for byte; missing ones are created; a leaf
// whose subject, SANs, usages or issuer no longer match the plan (or that
// expired) is re-issued with its existing key. Unreadable files are errors
// and are left untouched.
func Ensure(labDir, lab string, c plan.Cluster, net plan.Network, opts Options) (*Cluster, Report, error) {
	opts = opts.withDefaults(c)
	dir := Dir(labDir, c.Name)
	rep := Report{Cluster: c.Name}
	for _, d := range []string{dir, filepath.Join(dir, "etcd"), filepath.Join(dir, "kubeconfigs")} {
		if err := os.MkdirAll(d, dirMode); err != nil {
			return nil, rep, fmt.Errorf("create %s: %w", d, err)
		}
		if err := os.Chmod(d, dirMode); err != nil {
			return nil, rep, fmt.Errorf("chmod %s: %w", d, err)
		}
	}
	cl := &Cluster{Lab: lab, Name: c.Name, Dir: dir, creds: map[string]*credential{}, kubeconfigs: map[string][]byte{}, trust: map[string][]byte{}}
	now := opts.Now()
	rot, err := ReadRotation(dir)
	if err != nil {
		return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
	}
	cl.rotation = rot
	for _, s := range requiredCerts(lab, c, net) {
		var cr *credential
		var err error
		if rot != nil && rot.CA == s.Name {
			cr, cl.trust[s.Name], err = rotatingCA(dir, s, rot, opts, now, &rep)
		} else {
			cr, err = ensureCert(dir, s, cl.creds, opts, now, &rep)
		}
		if err != nil {
			return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
		}
		cl.names = append(cl.names, s.Name)
		cl.creds[s.Name] = cr
	}
	if err := cl.ensureServiceAccount(opts, &rep); err != nil {
		return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
	}
	if err := cl.ensureEncryption(&rep); err != nil {
		return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
	}
	if err := cl.ensureKubeconfigs(c, opts, &rep); err != nil {
		return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
	}
	unused, err := cl.unusedFiles()
	if err != nil {
		return nil, rep, fmt.Errorf("pki for cluster %s: %w", c.Name, err)
	}
	rep.Unused = unused
	return cl, rep, nil
}

func ensureCert(dir string, s certSpec, issued map[string]*credential, opts Options, now time.Time, rep *Report) (*credential, error) {
	certPath := filepath.Join(dir, s.Name+".crt")
	keyPath := filepath.Join(dir, s.Name+".key")
	var ca *credential
	validity := opts.CAValidity
	if !s.isCA() {
		ca = issued[s.CA]
		if ca == nil {
			return nil, fmt.Errorf("%s: issuing CA %s missing (programming error: CAs come first)", s.Name, s.CA)
		}
		validity = opts.LeafValidity
	}
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return nil, err
	}
	certPEM, err := readOptional(certPath)
	if err != nil {
		return nil, err
	}
	cr := &credential{spec: s}
	switch {
	case keyPEM == nil && certPEM != nil:
		return nil, fmt.Errorf("%s exists but its key %s does not; restore the key, or delete the certificate to issue a new pair", certPath, keyPath)
	case keyPEM == nil:
		key, err := generateKey(opts.KeyAlgorithm)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		if keyPEM, err = encodeKey(key); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		if err := cr.sign(key, ca, now, validity); err != nil {
			return nil, err
		}
		// Key first: a crash in between leaves a key without a certificate,
		// which the next run completes.
		if err := writeFile(keyPath, keyPEM, keyMode); err != nil {
			return nil, err
		}
		if err := writeFile(certPath, cr.certPEM, publicMode); err != nil {
			return nil, err
		}
		cr.keyPEM = keyPEM
		rep.add(s.Name, Created, "")
		return cr, nil
	}

	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s is not a usable private key (%v); restore it, or delete it and %s to create a new pair", keyPath, err, certPath)
	}
	if changed, err := ensureMode(keyPath, keyMode); err != nil {
		return nil, err
	} else if changed {
		rep.add(s.Name, Chmod, keyPath)
	}
	cr.keyPEM, cr.key = keyPEM, key
	if opts.Renew[s.Name] {
		return cr, cr.renew(keyPath, certPath, ca, opts, now, validity, rep)
	}
	if certPEM == nil {
		if err := cr.sign(key, ca, now, validity); err != nil {
			return nil, err
		}
		if err := writeFile(certPath, cr.certPEM, publicMode); err != nil {
			return nil, err
		}
		rep.add(s.Name, Issued, "certificate was missing; signed for the existing key")
		return cr, nil
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s is not a usable certificate (%v); restore it or delete it to issue a new one", certPath, err)
	}
	if !publicKeyEqual(cert, key) {
		return nil, fmt.Errorf("%s does not belong to the key %s; restore the matching pair, or delete the certificate to issue a new one", certPath, keyPath)
	}
	var caCert *x509.Certificate
	if ca != nil {
		caCert = ca.cert
	}
	why := mismatch(cert, s, caCert, now)
	if why == "" {
		cr.cert, cr.certPEM = cert, certPEM
		return cr, nil
	}
	if s.isCA() {
		// Re-creating a CA would invalidate every certificate a running
		// cluster trusts: a decision for a person, not for a rerun.
		return nil, fmt.Errorf("CA %s cannot be used: %s; rotating a CA breaks the cluster, so move the cluster's pki directory %s away and re-render it to start over", certPath, why, dir)
	}
	if err := cr.sign(key, ca, now, validity); err != nil {
		return nil, err
	}
	if err := writeFile(certPath, cr.certPEM, publicMode); err != nil {
		return nil, err
	}
	rep.add(s.Name, Reissued, why)
	return cr, nil
}

// renew re-issues a leaf on request, with a new key when opts.NewKeys.
// Key and certificate are two atomic writes: a crash between them leaves a
// certificate that does not match its key, which the next run reports with
// the fix (delete the certificate).
func (cr *credential) renew(keyPath, certPath string, ca *credential, opts Options, now time.Time, validity time.Duration, rep *Report) error {
	s := cr.spec
	if s.isCA() {
		return fmt.Errorf("%s is a CA; renewing a CA is a CA rotation, not a renewal", s.Name)
	}
	key, reason := cr.key, "same key"
	if opts.NewKeys {
		var err error
		if key, err = generateKey(opts.KeyAlgorithm); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		keyPEM, err := encodeKey(key)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		if err := writeFile(keyPath, keyPEM, keyMode); err != nil {
			return err
		}
		cr.keyPEM, reason = keyPEM, "new key"
	}
	if err := cr.sign(key, ca, now, validity); err != nil {
		return err
	}
	if err := writeFile(certPath, cr.certPEM, publicMode); err != nil {
		return err
	}
	rep.add(s.Name, Renewed, reason)
	return nil
}

func (cr *credential) sign(key crypto.Signer, ca *credential, now time.Time, validity time.Duration) error {
	var parent *x509.Certificate
	signer := key // a CA signs itself
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	cert, certPEM, err := issue(cr.spec, key.Public(), parent, signer, now, validity)
	if err != nil {
		return fmt.Errorf("issue %s: %w", cr.spec.Name, err)
	}
	cr.cert, cr.certPEM, cr.key = cert, certPEM, key
	return nil
}

// ensureServiceAccount keeps the key pair the API server signs service
// account tokens with (ES256 for the default P-256 key).
func (cl *Cluster) ensureServiceAccount(opts Options, rep *Report) error {
	keyPath := filepath.Join(cl.Dir, ServiceAccount+".key")
	pubPath := filepath.Join(cl.Dir, ServiceAccount+".pub")
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return err
	}
	pubPEM, err := readOptional(pubPath)
	if err != nil {
		return err
	}
	var key crypto.Signer
	created := keyPEM == nil
	if created {
		if pubPEM != nil {
			return fmt.Errorf("%s exists but %s does not; restore the key, or delete %s to create a new pair (invalidates every service account token)", pubPath, keyPath, pubPath)
		}
		if key, err = generateKey(opts.KeyAlgorithm); err != nil {
			return fmt.Errorf("service account key: %w", err)
		}
		if keyPEM, err = encodeKey(key); err != nil {
			return err
		}
		if err := writeFile(keyPath, keyPEM, keyMode); err != nil {
			return err
		}
		rep.add(ServiceAccount, Created, "")
	} else {
		if key, err = parseKey(keyPEM); err != nil {
			return fmt.Errorf("%s is not a usable private key (%v); restore it, or delete it and %s to create a new pair", keyPath, err, pubPath)
		}
		if changed, err := ensureMode(keyPath, keyMode); err != nil {
			return err
		} else if changed {
			rep.add(ServiceAccount, Chmod, keyPath)
		}
	}
	want, err := encodePublicKey(key.Public())
	if err != nil {
		return err
	}
	if pubPEM != nil && string(pubPEM) != string(want) {
		return fmt.Errorf("%s does not match the key %s; restore the matching pair, or delete %s to derive it from the key", pubPath, keyPath, pubPath)
	}
	if pubPEM == nil {
		if err := writeFile(pubPath, want, publicMode); err != nil {
			return err
		}
		if !created {
			rep.add(ServiceAccount, Issued, "public key was missing; derived from the existing key")
		}
	}
	cl.saKey, cl.saPub = keyPEM, want
	return nil
}

// PEM returns the certificate and private key of the credential name. For
// ServiceAccount, cert is the public key (sa.pub).
func (cl *Cluster) PEM(name string) (cert, key []byte, err error) {
	if name == ServiceAccount {
		return cl.saPub, cl.saKey, nil
	}
	cr, ok := cl.creds[name]
	if !ok {
		return nil, nil, fmt.Errorf("cluster %s has no credential %q", cl.Name, name)
	}
	return cr.certPEM, cr.keyPEM, nil
}

// CACert returns the certificate of the CA name (EtcdCA, KubernetesCA,
// FrontProxyCA, AppsCA), which is what nodes need to trust.
//
// During a rotation of that CA it is what every trust point holds: both
// generations, or only the new one in the last phase.
func (cl *Cluster) CACert(name string) ([]byte, error) {
	cr, ok := cl.creds[name]
	if !ok || !cr.spec.isCA() {
		return nil, fmt.Errorf("cluster %s has no CA %q", cl.Name, name)
	}
	if t, ok := cl.trust[name]; ok {
		return t, nil
	}
	return cr.certPEM, nil
}

// Rotation is the CA rotation in progress, or nil.
func (cl *Cluster) Rotation() *Rotation { return cl.rotation }

// ServiceAccountKeys returns sa.pub and sa.key.
func (cl *Cluster) ServiceAccountKeys() (pub, key []byte) { return cl.saPub, cl.saKey }

// Names lists every certificate's name, CAs first, in a fixed order.
func (cl *Cluster) Names() []string { return append([]string(nil), cl.names...) }

// unusedFiles lists files in the PKI directory that Ensure did not ask for,
// in lexical order.
func (cl *Cluster) unusedFiles() ([]string, error) {
	want := map[string]bool{ServiceAccount + ".key": true, ServiceAccount + ".pub": true, EncryptionConfigFile: true}
	if r := cl.rotation; r != nil {
		want[RotationFile], want[nextName(r.CA)+".crt"], want[nextName(r.CA)+".key"] = true, true, true
	}
	for _, n := range cl.names {
		want[n+".crt"], want[n+".key"] = true, true
	}
	for _, n := range cl.kcNames {
		want["kubeconfigs/"+n+".kubeconfig"] = true
	}
	var unused []string
	err := filepath.WalkDir(cl.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(cl.Dir, path)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); !want[rel] {
			unused = append(unused, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", cl.Dir, err)
	}
	return unused, nil
}
