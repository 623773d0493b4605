package cli

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

const certsLab = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: t
clusters:
- name: one
  index: 1
  kubernetesVersion: v1.37.2
  nodes:
  - {name: cp1, roles: [etcd, control-plane]}
  - {name: w1, roles: [worker]}
- name: two
  index: 2
  kubernetesVersion: v1.37.2
  nodes:
  - {name: x1, roles: [etcd, control-plane, worker]}
`

func runCerts(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(append([]string{"--dir", dir, "certs"}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestCertsCommand(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lab.yaml"), []byte(certsLab), 0o644); err != nil {
		t.Fatal(err)
	}
	// Nothing rendered yet: says so, creates nothing.
	out, errOut, code := runCerts(t, dir)
	if code != 0 || out != "" || !strings.Contains(errOut, "run kubelab render") {
		t.Fatalf("before render: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "clusters")); !os.IsNotExist(err) {
		t.Fatalf("certs created files: %v", err)
	}

	lab, _, err := spec.Load(filepath.Join(dir, "lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatal(err)
	}
	cl, _, err := pki.Ensure(dir, p.Lab, p.Clusters[0], p.Network, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := len(cl.Names())

	out, errOut, code = runCerts(t, dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != want+1 || !strings.HasPrefix(lines[0], "CLUSTER") {
		t.Fatalf("table has %d lines, want header + %d:\n%s", len(lines), want, out)
	}
	if !strings.Contains(out, "CN=kubelab-admin,O=kubelab:cluster-admins") || !strings.Contains(out, "CN=system:node:w1,O=system:nodes") {
		t.Errorf("table misses subjects:\n%s", out)
	}
	if !strings.Contains(errOut, "cluster two has no certificates yet") {
		t.Errorf("stderr %q does not mention cluster two", errOut)
	}

	out, _, code = runCerts(t, dir, "one", "-o", "json")
	var infos []pki.CertInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil || code != 0 {
		t.Fatalf("json: exit %d, %v\n%s", code, err, out)
	}
	if len(infos) != want || infos[0].Cluster != "one" || !infos[0].IsCA {
		t.Errorf("json has %d entries (want %d), first %+v", len(infos), want, infos[0])
	}

	if _, errOut, code = runCerts(t, dir, "nope"); code == 0 || !strings.Contains(errOut, "one, two") {
		t.Errorf("unknown cluster: exit %d, stderr %q", code, errOut)
	}
}

// TestRenewBadInput: every refusal names what is wrong and changes nothing
// in the PKI (no VM is involved: the checks come first).
func TestRenewBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lab.yaml"), []byte(certsLab), 0o644); err != nil {
		t.Fatal(err)
	}
	lab, _, err := spec.Load(filepath.Join(dir, "lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.Ensure(dir, p.Lab, p.Clusters[0], p.Network, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	before := readTree(t, pki.Dir(dir, "one"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"renew", "one", "apiserverr"}, `cluster one has no certificate "apiserverr"; its leaf certificates are: `},
		{[]string{"renew", "one", "ca"}, "ca is a CA of cluster one"},
		{[]string{"renew", "one"}, "name the certificates to renew, or use --all"},
		{[]string{"renew", "one", "--all", "admin"}, "not both"},
		{[]string{"renew", "apiserver"}, "the lab has 2 clusters; name one first (one, two)"},
		{[]string{"renew", "three", "apiserver"}, "the lab has 2 clusters"},
		{[]string{"rotate-encryption-key", "three"}, "the lab has 2 clusters"},
		{[]string{"rotate-ca", "one"}, "--ca is required"},
		{[]string{"rotate-ca", "one", "--ca", "kube"}, `unknown CA "kube"; use kubernetes, etcd, front-proxy or apps`},
		{[]string{"renew", "one", "etcd/ca"}, "rotate a CA with kubelab certs rotate-ca one --ca etcd"},
	} {
		_, errOut, code := runCerts(t, dir, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("certs %v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
	if after := readTree(t, pki.Dir(dir, "one")); !maps.Equal(before, after) {
		t.Error("a refused renewal changed the PKI")
	}
	// A half-done rotation of one CA blocks a rotation of another, and
	// says how to finish the first.
	if err := pki.StartRotation(pki.Dir(dir, "one"), pki.EtcdCA, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCerts(t, dir, "rotate-ca", "one", "--ca", "kubernetes")
	if code == 0 || !strings.Contains(errOut, "a rotation of the etcd CA is half done (phase trust-both); run kubelab certs rotate-ca one --ca etcd to finish it first") {
		t.Errorf("rotate-ca during another rotation: exit %d, %q", code, errOut)
	}
}

func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(path)
			out[path] = string(data)
		}
		return nil
	})
	return out
}

func TestExpiryWarnings(t *testing.T) {
	dir := t.TempDir()
	lab, err := spec.Parse([]byte(certsLab))
	if err != nil {
		t.Fatal(err)
	}
	spec.ApplyDefaults(lab)
	p, err := plan.New(lab, dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, _, err := pki.Ensure(dir, p.Lab, p.Clusters[0], p.Network, pki.Options{LeafValidity: 20 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	warnings := expiryWarnings(dir, []string{"one", "two"}, now, expiryWarning)
	leaves, _ := pki.CertNames(p.Clusters[0], p.Network)
	if len(warnings) != len(leaves) {
		t.Fatalf("%d warnings for %d leaves expiring in 20 days:\n%s", len(warnings), len(leaves), strings.Join(warnings, "\n"))
	}
	if !strings.Contains(warnings[0], "expires in 19 days") || !strings.Contains(strings.Join(warnings, "\n"), "kubelab certs renew one apiserver") {
		t.Errorf("warnings:\n%s", strings.Join(warnings, "\n"))
	}
	if w := expiryWarnings(dir, []string{"one"}, now, 10*24*time.Hour); len(w) != 0 {
		t.Errorf("warned 20 days ahead with a 10-day window: %v", w)
	}
	if w := expiryWarnings(dir, []string{"one"}, now.Add(25*24*time.Hour), expiryWarning); !strings.Contains(strings.Join(w, "\n"), "EXPIRED") {
		t.Errorf("expired certificates not called expired: %v", w)
	}
}
