package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func pemPool(t *testing.T, pemData []byte) (*x509.CertPool, int) {
	t.Helper()
	p := x509.NewCertPool()
	n := 0
	for rest := pemData; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		p.AddCert(c)
		n++
	}
	return p, n
}

func verifies(cl *Cluster, name string, roots *x509.CertPool) bool {
	c := cl.creds[name].cert
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: c.NotBefore.Add(2 * backdate)})
	return err == nil
}

// TestRotateCA walks a rotation of each CA through its phases with the
// real PKI and checks, at each phase, what signs, what is trusted, which
// leaves were re-issued (with their keys) and that the rest is untouched.
func TestRotateCA(t *testing.T) {
	for _, alias := range []string{"kubernetes", "etcd", "front-proxy"} {
		t.Run(alias, func(t *testing.T) {
			ca, err := CAByAlias(alias)
			if err != nil {
				t.Fatal(err)
			}
			p := mustPlan(t, testLab)
			dir := t.TempDir()
			orig, _ := mustEnsure(t, dir, p, 0)
			pkiDir := orig.Dir
			oldCA := orig.creds[ca].certPEM
			var leaves []string
			for _, n := range orig.names {
				if orig.creds[n].spec.CA == ca {
					leaves = append(leaves, n)
				}
			}
			if len(leaves) == 0 {
				t.Fatalf("no leaves under %s", ca)
			}

			if err := StartRotation(pkiDir, ca, Options{}); err != nil {
				t.Fatal(err)
			}
			// trust-both: old signs, both trusted, nothing re-issued.
			cl, rep := mustEnsure(t, dir, p, 0)
			trust, _ := cl.CACert(ca)
			roots, n := pemPool(t, trust)
			if n != 2 || !bytes.HasPrefix(trust, oldCA) {
				t.Fatalf("trust-both: %d certificates trusted, old first=%v", n, bytes.HasPrefix(trust, oldCA))
			}
			for _, c := range rep.Changes {
				if c.Action != Updated { // kubeconfigs embed the trust bundle
					t.Errorf("trust-both changed %s: %s", c.Name, c.Action)
				}
			}
			signer, _, _ := cl.PEM(ca)
			if !bytes.Equal(signer, oldCA) {
				t.Error("trust-both: the new CA signs already")
			}
			if alias == "kubernetes" {
				kc, _ := cl.Kubeconfig(Admin)
				if !strings.Contains(string(kc), "certificate-authority-data") || bytes.Count(trust, []byte("BEGIN CERTIFICATE")) != 2 {
					t.Error("admin kubeconfig does not carry both CAs")
				}
			}

			// reissue: every leaf of the CA re-issued under the new one, same key.
			if r, err := AdvanceRotation(pkiDir); err != nil || r.Phase != RotationReissue {
				t.Fatalf("advance: %v %v", r, err)
			}
			before := snapshot(t, pkiDir)
			cl, rep = mustEnsure(t, dir, p, 0)
			reissued := map[string]bool{}
			for _, c := range rep.Changes {
				if c.Action == Reissued {
					reissued[c.Name] = true
				}
			}
			newCA := cl.creds[ca].certPEM
			newRoots, _ := pemPool(t, newCA)
			for _, l := range leaves {
				if !reissued[l] {
					t.Errorf("reissue: %s not re-issued", l)
				}
				if !verifies(cl, l, newRoots) || !verifies(cl, l, roots) {
					t.Errorf("reissue: %s does not verify under the new CA and the bundle", l)
				}
				if !bytes.Equal(before[l+".key"].data, mustRead(filepath.Join(pkiDir, l+".key"))) {
					t.Errorf("reissue: %s got a new key", l)
				}
			}
			for n := range reissued {
				if cl.creds[n].spec.CA != ca {
					t.Errorf("reissue: %s of another CA was re-issued", n)
				}
			}

			// trust-new: only the new CA.
			if r, err := AdvanceRotation(pkiDir); err != nil || r.Phase != RotationTrustNew {
				t.Fatalf("advance: %v %v", r, err)
			}
			cl, _ = mustEnsure(t, dir, p, 0)
			if trust, _ := cl.CACert(ca); !bytes.Equal(trust, newCA) {
				t.Error("trust-new: the old CA is still trusted")
			}
			if _, err := AdvanceRotation(pkiDir); err == nil {
				t.Error("advanced past the last phase")
			}

			// finish: the new CA is the CA, nothing left over, a rerun reuses all.
			if err := FinishRotation(pkiDir); err != nil {
				t.Fatal(err)
			}
			if got := mustRead(filepath.Join(pkiDir, ca+".crt")); !bytes.Equal(got, newCA) {
				t.Error("finish: the new CA did not replace the old one")
			}
			cl, rep = mustEnsure(t, dir, p, 0)
			if len(rep.Changes) != 0 || len(rep.Unused) != 0 || cl.Rotation() != nil {
				t.Errorf("after finishing: changes %v, unused %v", rep.Changes, rep.Unused)
			}
			for _, f := range []string{RotationFile, ca + ".next.crt", ca + ".next.key"} {
				if _, err := os.Stat(filepath.Join(pkiDir, f)); !os.IsNotExist(err) {
					t.Errorf("%s left behind: %v", f, err)
				}
			}
			if err := FinishRotation(pkiDir); err == nil {
				t.Error("finished a rotation twice")
			}
		})
	}
}

func TestRotationRefusals(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	cl, _ := mustEnsure(t, dir, p, 0)
	if _, err := CAByAlias("kube"); err == nil || !strings.Contains(err.Error(), "use kubernetes, etcd, front-proxy or apps") {
		t.Errorf("alias: %v", err)
	}
	if err := StartRotation(cl.Dir, Admin, Options{}); err == nil {
		t.Error("started a rotation of a leaf")
	}
	if _, err := AdvanceRotation(cl.Dir); err == nil {
		t.Error("advanced without a rotation")
	}
	if err := StartRotation(cl.Dir, EtcdCA, Options{}); err != nil {
		t.Fatal(err)
	}
	err := StartRotation(cl.Dir, KubernetesCA, Options{})
	if err == nil || !strings.Contains(err.Error(), "rotation of the etcd CA is half done (phase trust-both") ||
		!strings.Contains(err.Error(), "kubelab certs rotate-ca --ca etcd") {
		t.Errorf("second rotation: %v", err)
	}
	// A rotation record without its new CA is an error that says how to abandon it.
	os.Remove(filepath.Join(cl.Dir, "etcd/ca.next.key"))
	if _, _, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{}); err == nil || !strings.Contains(err.Error(), "to abandon the rotation") {
		t.Errorf("missing new CA: %v", err)
	}
}
