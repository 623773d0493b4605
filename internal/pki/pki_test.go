package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

type wantCert struct {
	name string
	ca   string // "" for a CA
	cn   string
	o    []string
	dns  []string
	ips  []string
	ekus []x509.ExtKeyUsage
}

var (
	srv  = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	cli  = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	both = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// wantTestLab is written out by hand from testLab's address plan:
// cp1=.10, w1=.11, w2=.12, gateway .1, service network 10.199.0.0/16.
var wantTestLab = []wantCert{
	{name: "etcd/ca", cn: "etcd-ca", o: []string{"kubelab t/one"}},
	{name: "ca", cn: "kubernetes-ca", o: []string{"kubelab t/one"}},
	{name: "front-proxy-ca", cn: "front-proxy-ca", o: []string{"kubelab t/one"}},
	{name: "apps-ca", cn: "apps-ca", o: []string{"kubelab t/one"}},
	{name: "etcd/server-cp1", ca: "etcd/ca", cn: "cp1", dns: []string{"cp1", "localhost"}, ips: []string{"192.168.100.10", "127.0.0.1"}, ekus: both},
	{name: "etcd/peer-cp1", ca: "etcd/ca", cn: "cp1", dns: []string{"cp1"}, ips: []string{"192.168.100.10"}, ekus: both},
	{name: "etcd/apiserver-client", ca: "etcd/ca", cn: "kube-apiserver-etcd-client", ekus: cli},
	{name: "etcd/flannel-client", ca: "etcd/ca", cn: "flannel", ekus: cli},
	{name: "apiserver", ca: "ca", cn: "kube-apiserver",
		dns:  []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", "cp1"},
		ips:  []string{"10.199.0.1", "192.168.100.10", "127.0.0.1", "192.168.100.1"},
		ekus: srv},
	{name: "apiserver-kubelet-client", ca: "ca", cn: "kube-apiserver-kubelet-client", ekus: cli},
	{name: "front-proxy-client", ca: "front-proxy-ca", cn: "front-proxy-client", ekus: cli},
	{name: "controller-manager", ca: "ca", cn: "system:kube-controller-manager", ekus: cli},
	{name: "scheduler", ca: "ca", cn: "system:kube-scheduler", ekus: cli},
	{name: "kube-proxy", ca: "ca", cn: "system:kube-proxy", ekus: cli},
	{name: "admin", ca: "ca", cn: "kubelab-admin", o: []string{"kubelab:cluster-admins"}, ekus: cli},
	{name: "super-admin", ca: "ca", cn: "kubelab-super-admin", o: []string{"system:masters"}, ekus: cli},
	{name: "kubelet-w1", ca: "ca", cn: "system:node:w1", o: []string{"system:nodes"}, ekus: cli},
	{name: "kubelet-serving-w1", ca: "ca", cn: "system:node:w1", o: []string{"system:nodes"}, dns: []string{"w1"}, ips: []string{"192.168.100.11"}, ekus: srv},
	{name: "kubelet-w2", ca: "ca", cn: "system:node:w2", o: []string{"system:nodes"}, ekus: cli},
	{name: "kubelet-serving-w2", ca: "ca", cn: "system:node:w2", o: []string{"system:nodes"}, dns: []string{"w2"}, ips: []string{"192.168.100.12"}, ekus: srv},
}

func TestCertificates(t *testing.T) {
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	var gotNames []string
	for _, w := range wantTestLab {
		gotNames = append(gotNames, w.name)
	}
	if !slices.Equal(cl.Names(), gotNames) {
		t.Fatalf("names:\n got %v\nwant %v", cl.Names(), gotNames)
	}
	for _, w := range wantTestLab {
		t.Run(w.name, func(t *testing.T) {
			certPEM, keyPEM, err := cl.PEM(w.name)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := parseCert(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Errorf("key does not match certificate: %v", err)
			}
			if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("key type %T, want ECDSA", cert.PublicKey)
			}
			if cert.Subject.CommonName != w.cn {
				t.Errorf("CN %q, want %q", cert.Subject.CommonName, w.cn)
			}
			if !slices.Equal(cert.Subject.Organization, w.o) && len(cert.Subject.Organization)+len(w.o) > 0 {
				t.Errorf("O %q, want %q", cert.Subject.Organization, w.o)
			}
			if !slices.Equal(cert.DNSNames, w.dns) && len(cert.DNSNames)+len(w.dns) > 0 {
				t.Errorf("DNS SANs %q, want %q", cert.DNSNames, w.dns)
			}
			if got := ipStrings(cert.IPAddresses); !slices.Equal(got, w.ips) && len(got)+len(w.ips) > 0 {
				t.Errorf("IP SANs %q, want %q", got, w.ips)
			}
			if !slices.Equal(cert.ExtKeyUsage, w.ekus) && len(cert.ExtKeyUsage)+len(w.ekus) > 0 {
				t.Errorf("EKUs %v, want %v", cert.ExtKeyUsage, w.ekus)
			}
			if len(cert.SubjectKeyId) == 0 {
				t.Error("no SubjectKeyId")
			}
			if cert.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v is not random 128-bit", cert.SerialNumber)
			}
			if w.ca == "" {
				checkCA(t, cl, w.name, cert)
				return
			}
			if cert.IsCA {
				t.Error("leaf is a CA")
			}
			if cert.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage %b, want DigitalSignature only", cert.KeyUsage)
			}
			if life := cert.NotAfter.Sub(cert.NotBefore); life < 360*24*time.Hour || life > 370*24*time.Hour {
				t.Errorf("leaf lifetime %v, want about a year", life)
			}
			caPEM, err := cl.CACert(w.ca)
			if err != nil {
				t.Fatal(err)
			}
			ca, _ := parseCert(caPEM)
			if !bytes.Equal(cert.AuthorityKeyId, ca.SubjectKeyId) {
				t.Errorf("AuthorityKeyId %x, want the CA's SubjectKeyId %x", cert.AuthorityKeyId, ca.SubjectKeyId)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			for _, u := range w.ekus {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("verify for %v against %s: %v", u, w.ca, err)
				}
			}
			// A usage the certificate must not have is refused.
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if !slices.Contains(w.ekus, u) {
					if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err == nil {
						t.Errorf("verifies for usage %v it must not have", u)
					}
				}
			}
			// Every SAN is accepted as a host name.
			for _, h := range append(slices.Clone(w.dns), w.ips...) {
				if err := cert.VerifyHostname(h); err != nil {
					t.Errorf("host %s: %v", h, err)
				}
			}
			// Signed by its own CA, not another one of the cluster's.
			for _, other := range []string{EtcdCA, KubernetesCA, FrontProxyCA, AppsCA} {
				if other == w.ca {
					continue
				}
				o, _ := cl.CACert(other)
				oc, _ := parseCert(o)
				pool := x509.NewCertPool()
				pool.AddCert(oc)
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
					t.Errorf("also verifies against %s", other)
				}
			}
		})
	}
}

func checkCA(t *testing.T, cl *Cluster, name string, cert *x509.Certificate) {
	t.Helper()
	if !cert.IsCA || !cert.BasicConstraintsValid {
		t.Error("CA certificate without CA basic constraints")
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; cert.KeyUsage != want {
		t.Errorf("key usage %b, want %b", cert.KeyUsage, want)
	}
	if life := cert.NotAfter.Sub(cert.NotBefore); life < 3640*24*time.Hour {
		t.Errorf("CA lifetime %v, want about 10 years", life)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if _, err := cl.CACert(name); err != nil {
		t.Error(err)
	}
}

func TestOpenSSLVerify(t *testing.T) {
	openssl := requireTool(t, "openssl")
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	cl, _ := mustEnsure(t, dir, p, 0)
	for _, w := range wantTestLab {
		crt := filepath.Join(cl.Dir, w.name+".crt")
		key := filepath.Join(cl.Dir, w.name+".key")
		if out, err := exec.Command(openssl, "pkey", "-in", key, "-noout").CombinedOutput(); err != nil {
			t.Errorf("openssl cannot read %s: %v\n%s", key, err, out)
		}
		if w.ca == "" {
			runOpenSSLVerify(t, openssl, crt, crt, "")
			continue
		}
		ca := filepath.Join(cl.Dir, w.ca+".crt")
		for _, u := range w.ekus {
			purpose := "sslclient"
			if u == x509.ExtKeyUsageServerAuth {
				purpose = "sslserver"
			}
			runOpenSSLVerify(t, openssl, ca, crt, purpose)
		}
	}
	// The API server certificate answers for the host-forwarded endpoint.
	for _, arg := range [][]string{{"-checkip", "192.168.100.1"}, {"-checkip", "127.0.0.1"}, {"-checkhost", "kubernetes.default.svc.cluster.local"}} {
		out, err := exec.Command(openssl, append([]string{"x509", "-noout", "-in", filepath.Join(cl.Dir, "apiserver.crt")}, arg...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "does match") {
			t.Errorf("openssl x509 %v: %v\n%s", arg, err, out)
		}
	}
}

func runOpenSSLVerify(t *testing.T, openssl, ca, crt, purpose string) {
	t.Helper()
	args := []string{"verify", "-CAfile", ca}
	if purpose != "" {
		args = append(args, "-purpose", purpose)
	}
	out, err := exec.Command(openssl, append(args, crt)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestKubeconfigs(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	cl, _ := mustEnsure(t, dir, p, 0)
	want := []string{"admin", "super-admin", "controller-manager", "scheduler", "kube-proxy", "kubelet-w1", "kubelet-w2"}
	if !slices.Equal(cl.KubeconfigNames(), want) {
		t.Fatalf("kubeconfigs %v, want %v", cl.KubeconfigNames(), want)
	}
	caPEM, _ := cl.CACert(KubernetesCA)
	for _, name := range want {
		t.Run(name, func(t *testing.T) {
			path := KubeconfigPath(cl.Dir, name)
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			data, _ := os.ReadFile(path)
			mem, err := cl.Kubeconfig(name)
			if err != nil || !bytes.Equal(data, mem) {
				t.Errorf("file and Kubeconfig(%s) differ (err %v)", name, err)
			}
			cfg, err := clientcmd.Load(data)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			wantServer := "https://192.168.100.10:6443"
			if name == Admin || name == SuperAdmin {
				wantServer = "https://127.0.0.1:8101"
			}
			if rc.Host != wantServer {
				t.Errorf("server %s, want %s", rc.Host, wantServer)
			}
			if !bytes.Equal(rc.TLSClientConfig.CAData, caPEM) {
				t.Error("CA is not the cluster's Kubernetes CA")
			}
			certPEM, keyPEM, _ := cl.PEM(name)
			if !bytes.Equal(rc.TLSClientConfig.CertData, certPEM) || !bytes.Equal(rc.TLSClientConfig.KeyData, keyPEM) {
				t.Error("embedded client credential is not the one on disk")
			}
			if _, err := tls.X509KeyPair(rc.TLSClientConfig.CertData, rc.TLSClientConfig.KeyData); err != nil {
				t.Errorf("embedded certificate does not match its key: %v", err)
			}
			wantCtx := "kubelab-t-one"
			if name != Admin {
				wantCtx += "-" + name
			}
			if cfg.CurrentContext != wantCtx {
				t.Errorf("context %q, want %q", cfg.CurrentContext, wantCtx)
			}
		})
	}
}

func TestModes(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	cl, _ := mustEnsure(t, dir, p, 0)
	for rel, st := range snapshot(t, cl.Dir) {
		var want os.FileMode
		switch {
		case st.mode.IsDir():
			want = 0o700
		case strings.HasSuffix(rel, ".key") || strings.HasSuffix(rel, ".kubeconfig") || rel == EncryptionConfigFile:
			want = 0o600
		case strings.HasSuffix(rel, ".crt") || strings.HasSuffix(rel, ".pub"):
			want = 0o644
		default:
			t.Errorf("unexpected file %s", rel)
			continue
		}
		if st.mode.Perm() != want {
			t.Errorf("%s: mode %v, want %v", rel, st.mode.Perm(), want)
		}
	}
}

func TestServiceAccount(t *testing.T) {
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	pub, key, err := cl.PEM(ServiceAccount)
	if err != nil {
		t.Fatal(err)
	}
	k, err := parseKey(key)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := encodePublicKey(k.Public())
	if !bytes.Equal(pub, want) {
		t.Error("sa.pub is not sa.key's public key")
	}
	if _, ok := k.(*ecdsa.PrivateKey); !ok {
		t.Errorf("sa key %T, want ECDSA (ES256)", k)
	}
	onDisk, _ := os.ReadFile(filepath.Join(cl.Dir, "sa.pub"))
	if !bytes.Equal(onDisk, pub) {
		t.Error("sa.pub on disk differs")
	}
}

func TestListMatchesEnsure(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	if _, err := List(dir, "one"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List before Ensure: %v, want not-exist", err)
	}
	cl, _ := mustEnsure(t, dir, p, 0)
	got, err := List(dir, "one")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]CertInfo{}
	for _, i := range got {
		byName[i.Name] = i
	}
	mem := cl.Certs()
	if len(got) != len(mem) || len(mem) != len(wantTestLab) {
		t.Fatalf("List has %d, Certs %d, want %d", len(got), len(mem), len(wantTestLab))
	}
	for i, m := range mem {
		if wantTestLab[i].ca != "" && m.Issuer != wantTestLab[i].ca || wantTestLab[i].ca == "" && m.Issuer != m.Name {
			t.Errorf("%s: Certs issuer %q", m.Name, m.Issuer)
		}
		l := byName[m.Name]
		if l.Issuer != m.Issuer || l.CommonName != m.CommonName || !l.NotAfter.Equal(m.NotAfter) || !slices.Equal(l.IPAddresses, m.IPAddresses) {
			t.Errorf("%s: List %+v, Certs %+v", m.Name, l, m)
		}
		if d := m.DaysLeft(time.Now()); (m.IsCA && d < 3600) || (!m.IsCA && (d < 360 || d > 366)) {
			t.Errorf("%s: %d days left", m.Name, d)
		}
	}
	for i := 0; i < 4; i++ {
		if !got[i].IsCA {
			t.Errorf("List[%d] = %s, want the CAs first", i, got[i].Name)
		}
	}
}
