package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
