package nodeconfig

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// labSpec is a lab with one cluster of the given nodes ("name:role,role").
func labSpec(podNetwork, ipFamily string, nodes ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: %s\nkind: Lab\nname: lab\nclusters:\n  - name: k1\n    podNetwork: %s\n", spec.APIVersion, podNetwork)
	if ipFamily != "" {
		fmt.Fprintf(&b, "    ipFamily: %s\n", ipFamily)
	}
	b.WriteString("    nodes:\n")
	for _, n := range nodes {
		name, roles, _ := strings.Cut(n, ":")
		fmt.Fprintf(&b, "      - name: %s\n        roles: [%s]\n", name, roles)
	}
	return b.String()
}

// planFor parses, defaults, validates and plans a lab spec.
func planFor(t testing.TB, yaml string) *plan.Plan {
	t.Helper()
	lab, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("parse spec: %v\n%s", err, yaml)
	}
	spec.ApplyDefaults(lab)
	dir := t.TempDir()
	if _, err := spec.Validate(lab, dir); err != nil {
		t.Fatalf("validate spec: %v\n%s", err, yaml)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return p
}

// fakeCreds hands out real, freshly generated PEM material per name, so
// tests can find every piece of key material by its bytes. It records the
// names asked for.
type fakeCreds struct {
	mu     sync.Mutex
	certs  map[string][2][]byte
	kcs    map[string][]byte
	asked  map[string]bool
	denied map[string]bool // names that fail, to test error paths
}

func newFakeCreds() *fakeCreds {
	return &fakeCreds{certs: map[string][2][]byte{}, kcs: map[string][]byte{}, asked: map[string]bool{}, denied: map[string]bool{}}
}

func (f *fakeCreds) pair(name string) ([2][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked[name] = true
	if f.denied[name] {
		return [2][]byte{}, fmt.Errorf("fake: no credential %q", name)
	}
	if p, ok := f.certs[name]; ok {
		return p, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return [2][]byte{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return [2][]byte{}, err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return [2][]byte{}, err
	}
	p := [2][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
	}
	f.certs[name] = p
	return p, nil
}

func (f *fakeCreds) PEM(name string) ([]byte, []byte, error) {
	p, err := f.pair(name)
	return p[0], p[1], err
}

func (f *fakeCreds) CACert(name string) ([]byte, error) {
	p, err := f.pair(name)
	return p[0], err
}

func (f *fakeCreds) EncryptionConfig() []byte {
	return []byte("# fake encryption configuration\nkind: EncryptionConfiguration\n")
}

func (f *fakeCreds) Kubeconfig(name string) ([]byte, error) {
	return f.KubeconfigFor(name, "https://192.168.100.10:6443")
}

func (f *fakeCreds) KubeconfigFor(name, server string) ([]byte, error) {
	p, err := f.pair(name)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "apiVersion: v1\nkind: Config\n# fake kubeconfig of %s for %s\nkey: |\n%s", name, server, indent(string(p[1]))), nil
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString("  " + l)
		}
	}
	return b.String()
}

// placeholders maps every piece of key material the fake handed out to a
// stable name, so goldens do not depend on the keys.
func (f *fakeCreds) placeholders() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for name, p := range f.certs {
		out[string(p[0])] = fmt.Sprintf("<certificate %s>\n", name)
		out[string(p[1])] = fmt.Sprintf("<private key %s>\n", name)
		out[indent(string(p[1]))] = fmt.Sprintf("  <private key %s>\n", name)
	}
	return out
}

func (f *fakeCreds) askedNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.asked {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// hostKey generates an ed25519 ssh host key for a test.
func hostKey(t testing.TB) SSHHostKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return SSHHostKey{Type: "ed25519", Private: pem.EncodeToMemory(block), Public: ssh.MarshalAuthorizedKey(sp)}
}

const testAuthorizedKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubelabTestKeyOnlyForGoldenFilesXXXXXXXXXXXX test@kubelab"

// buildAll builds every node of every cluster of p with creds (one per
// cluster from mk).
func buildAll(t testing.TB, p *plan.Plan, mk func(c plan.Cluster) Credentials) map[string]Node {
	t.Helper()
	out := map[string]Node{}
	for _, c := range p.Clusters {
		creds := mk(c)
		for _, n := range c.Nodes {
			node, err := Build(Input{Plan: p, Cluster: c, Node: n, Creds: creds, Versions: versions.Default(),
				SSHAuthorizedKeys: []string{testAuthorizedKey}, SSHHostKey: hostKey(t), Source: "lab.yaml"})
			if err != nil {
				t.Fatalf("Build %s: %v", n.Name, err)
			}
			out[n.Name] = node
		}
	}
	return out
}

// realPKI makes the cluster's real credentials with internal/pki.
func realPKI(t testing.TB, p *plan.Plan) func(c plan.Cluster) Credentials {
	dir := t.TempDir()
	return func(c plan.Cluster) Credentials {
		cl, _, err := pki.Ensure(dir, p.Lab, c, p.Network, pki.Options{})
		if err != nil {
			t.Fatalf("pki.Ensure %s: %v", c.Name, err)
		}
		return cl
	}
}

func fileByPath(n Node, path string) (File, bool) {
	for _, f := range n.Files {
		if f.Path == path {
			return f, true
		}
	}
	return File{}, false
}

func unitByName(n Node, name string) (Unit, bool) {
	for _, u := range n.Units {
		if u.Name == name {
			return u, true
		}
	}
	return Unit{}, false
}

// cacheDir is kubelab's cache, where the component builder puts binaries.
func cacheDir() string {
	if d := os.Getenv("KUBELAB_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "kubelab")
}

// componentBinary finds a binary the component builder cached, or fails
// under CI and skips elsewhere.
func componentBinary(t *testing.T, name string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(cacheDir(), "components", "*", "bin", name))
	sort.Strings(matches)
	for i := len(matches) - 1; i >= 0; i-- {
		if fi, err := os.Stat(matches[i]); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return matches[i]
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not in %s/components/*/bin; run `kubelab components build` first", name, cacheDir())
	}
	t.Skipf("%s not built yet (run `kubelab components build`); skipping outside CI", name)
	return ""
}
