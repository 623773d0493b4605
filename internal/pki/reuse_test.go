package pki

import (
	"bytes"
	"crypto/rsa"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestSecondRunChangesNothing(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	mustEnsure(t, dir, p, 0)
	before := snapshot(t, dir)
	_, rep := mustEnsure(t, dir, p, 0)
	if len(rep.Changes) != 0 {
		t.Errorf("second run reported changes:\n%s", rep)
	}
	assertSame(t, before, snapshot(t, dir))
}

func assertSame(t *testing.T, before, after map[string]fileState) {
	t.Helper()
	for rel, b := range before {
		a, ok := after[rel]
		switch {
		case !ok:
			t.Errorf("%s disappeared", rel)
		case !bytes.Equal(a.data, b.data):
			t.Errorf("%s changed", rel)
		case a.mode != b.mode:
			t.Errorf("%s mode %v -> %v", rel, b.mode, a.mode)
		}
	}
	for rel := range after {
		if _, ok := before[rel]; !ok {
			t.Errorf("%s appeared", rel)
		}
	}
}

// diffFiles lists files that were added or changed.
func diffFiles(before, after map[string]fileState) (added, changed []string) {
	for rel, a := range after {
		b, ok := before[rel]
		switch {
		case !ok:
			added = append(added, rel)
		case !bytes.Equal(a.data, b.data):
			changed = append(changed, rel)
		}
	}
	sort.Strings(added)
	sort.Strings(changed)
	return added, changed
}

func TestAddWorkerAddsOnlyItsFiles(t *testing.T) {
	dir := t.TempDir()
	mustEnsure(t, dir, mustPlan(t, testLab), 0)
	before := snapshot(t, dir)
	p := mustPlan(t, testLab+"  - {name: w3, roles: [worker]}\n")
	_, rep := mustEnsure(t, dir, p, 0)
	added, changed := diffFiles(before, snapshot(t, dir))
	wantAdded := []string{
		"clusters/one/pki/kubeconfigs/kubelet-w3.kubeconfig",
		"clusters/one/pki/kubelet-serving-w3.crt",
		"clusters/one/pki/kubelet-serving-w3.key",
		"clusters/one/pki/kubelet-w3.crt",
		"clusters/one/pki/kubelet-w3.key",
	}
	if !slices.Equal(added, wantAdded) {
		t.Errorf("added %v, want %v", added, wantAdded)
	}
	if len(changed) != 0 {
		t.Errorf("changed %v, want nothing", changed)
	}
	var names []string
	for _, c := range rep.Changes {
		if c.Action != Created {
			t.Errorf("change %+v, want only creations", c)
		}
		names = append(names, c.Name)
	}
	if want := []string{"kubelet-w3", "kubelet-serving-w3", "kubelet-w3.kubeconfig"}; !slices.Equal(names, want) {
		t.Errorf("report %v, want %v", names, want)
	}
}

func TestAddControlPlaneReissuesAPIServerWithSameKey(t *testing.T) {
	dir := t.TempDir()
	ha := testLab + "  - {name: cp2, roles: [etcd, control-plane], address: 192.168.100.14}\n"
	mustEnsure(t, dir, mustPlan(t, ha), 0)
	before := snapshot(t, dir)
	p := mustPlan(t, ha+"  - {name: cp3, roles: [etcd, control-plane], address: 192.168.100.15}\n")
	cl, rep := mustEnsure(t, dir, p, 0)
	_, changed := diffFiles(before, snapshot(t, dir))
	if want := []string{"clusters/one/pki/apiserver.crt"}; !slices.Equal(changed, want) {
		t.Errorf("changed %v, want %v", changed, want)
	}
	var reissued []Change
	for _, c := range rep.Changes {
		if c.Action == Reissued {
			reissued = append(reissued, c)
		}
	}
	if len(reissued) != 1 || reissued[0].Name != APIServer || !strings.Contains(reissued[0].Reason, "cp3") {
		t.Errorf("reissued %+v, want apiserver with a reason naming cp3", reissued)
	}
	crt, _, _ := cl.PEM(APIServer)
	cert, _ := parseCert(crt)
	if err := cert.VerifyHostname("cp3"); err != nil {
		t.Error(err)
	}
	// cp3 has its own address and the endpoint stays the virtual address,
	// so nothing else moves.
	if err := cert.VerifyHostname(p.Clusters[0].NodesWithRole("control-plane")[2].Address.String()); err != nil {
		t.Error(err)
	}
}

// A second control plane turns the endpoint into the virtual address: the
// API certificate names it and every in-cluster kubeconfig points at it,
// while the admin kubeconfig keeps the host forward.
func TestSecondControlPlaneMovesTheEndpointToTheVirtualAddress(t *testing.T) {
	dir := t.TempDir()
	mustEnsure(t, dir, mustPlan(t, testLab), 0)
	before := snapshot(t, dir)
	p := mustPlan(t, testLab+"  - {name: cp2, roles: [etcd, control-plane]}\n")
	vip := p.Clusters[0].APIVIP
	if vip.String() != "192.168.100.19" {
		t.Fatalf("virtual address %v, want the block's last address 192.168.100.19", vip)
	}
	cl, _ := mustEnsure(t, dir, p, 0)
	_, changed := diffFiles(before, snapshot(t, dir))
	for _, want := range []string{"clusters/one/pki/apiserver.crt", "clusters/one/pki/kubeconfigs/kube-proxy.kubeconfig", "clusters/one/pki/kubeconfigs/kubelet-w1.kubeconfig"} {
		if !slices.Contains(changed, want) {
			t.Errorf("%s did not change (changed: %v)", want, changed)
		}
	}
	if slices.Contains(changed, "clusters/one/pki/kubeconfigs/admin.kubeconfig") {
		t.Error("the admin kubeconfig changed; it should keep the host forward")
	}
	crt, _, _ := cl.PEM(APIServer)
	cert, _ := parseCert(crt)
	if err := cert.VerifyHostname(vip.String()); err != nil {
		t.Error(err)
	}
	kc, err := cl.Kubeconfig("kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(kc), "server: https://192.168.100.19:6443") {
		t.Errorf("kube-proxy's kubeconfig does not point at the virtual address:\n%s", kc)
	}
}

func TestCorruptKeyIsAnErrorAndUntouched(t *testing.T) {
	dir := t.TempDir()
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, dir, p, 0)
	for _, name := range []string{Scheduler, KubernetesCA, ServiceAccount} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(cl.Dir, name+".key")
			orig, _ := os.ReadFile(path)
			defer os.WriteFile(path, orig, 0o600)
			// A PEM block with the right type but no key inside ("not a key").
			garbage := []byte("-----BEGIN " + "PRIVATE KEY-----\nbm90IGEga2V5\n-----END " + "PRIVATE KEY-----\n")
			if err := os.WriteFile(path, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			_, _, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{})
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want one naming %s", err, path)
			}
			assertSame(t, before, snapshot(t, dir))
		})
	}
}

func TestBrokenPairsAreErrors(t *testing.T) {
	cases := []struct {
		name    string
		breakIt func(dir string) error
		file    string
	}{
		{"garbage cert", func(d string) error { return os.WriteFile(filepath.Join(d, "kube-proxy.crt"), []byte("junk"), 0o644) }, "kube-proxy.crt"},
		{"cert without key", func(d string) error { return os.Remove(filepath.Join(d, "kube-proxy.key")) }, "kube-proxy.crt"},
		{"cert of another key", func(d string) error {
			b, err := os.ReadFile(filepath.Join(d, "scheduler.crt"))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(d, "kube-proxy.crt"), b, 0o644)
		}, "kube-proxy.crt"},
		{"sa.pub of another key", func(d string) error {
			b, _ := os.ReadFile(filepath.Join(d, "scheduler.key"))
			k, err := parseKey(b)
			if err != nil {
				return err
			}
			pub, _ := encodePublicKey(k.Public())
			return os.WriteFile(filepath.Join(d, "sa.pub"), pub, 0o644)
		}, "sa.pub"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := mustPlan(t, testLab)
			cl, _ := mustEnsure(t, dir, p, 0)
			if err := tc.breakIt(cl.Dir); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			_, _, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{})
			if err == nil || !strings.Contains(err.Error(), filepath.Join(cl.Dir, tc.file)) {
				t.Fatalf("error %v, want one naming %s", err, tc.file)
			}
			assertSame(t, before, snapshot(t, dir))
		})
	}
}

func TestMissingPiecesAreCompleted(t *testing.T) {
	dir := t.TempDir()
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, dir, p, 0)
	keyBefore, _ := os.ReadFile(filepath.Join(cl.Dir, "kube-proxy.key"))
	os.Remove(filepath.Join(cl.Dir, "kube-proxy.crt"))
	os.Remove(filepath.Join(cl.Dir, "sa.pub"))
	os.Chmod(filepath.Join(cl.Dir, "admin.key"), 0o644)
	_, rep, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{})
	if err != nil {
		t.Fatal(err)
	}
	keyAfter, _ := os.ReadFile(filepath.Join(cl.Dir, "kube-proxy.key"))
	if !bytes.Equal(keyBefore, keyAfter) {
		t.Error("kube-proxy key was replaced")
	}
	got := map[string]string{}
	for _, c := range rep.Changes {
		got[c.Name] = c.Action
	}
	want := map[string]string{KubeProxy: Issued, ServiceAccount: Issued, Admin: Chmod, "kube-proxy.kubeconfig": Updated}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: action %q, want %q (report:\n%s)", k, got[k], v, rep)
		}
	}
	if len(got) != len(want) {
		t.Errorf("report has %d changes, want %d:\n%s", len(got), len(want), rep)
	}
	if st, _ := os.Stat(filepath.Join(cl.Dir, "admin.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("admin.key mode %v", st.Mode().Perm())
	}
}

func TestExpiredLeafReissuedExpiredCAFails(t *testing.T) {
	dir := t.TempDir()
	p := mustPlan(t, testLab)
	mustEnsure(t, dir, p, 0)
	before := snapshot(t, dir)
	later := func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }
	_, rep, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{Now: later})
	if err != nil {
		t.Fatal(err)
	}
	leaves := len(wantTestLab) - 4
	n := 0
	for _, c := range rep.Changes {
		if c.Action == Reissued && strings.Contains(c.Reason, "expired") {
			n++
		}
	}
	if n != leaves {
		t.Errorf("%d leaves re-issued for expiry, want %d:\n%s", n, leaves, rep)
	}
	after := snapshot(t, dir)
	for rel, b := range before {
		if strings.HasSuffix(rel, ".key") && !bytes.Equal(b.data, after[rel].data) {
			t.Errorf("%s changed; re-issuing must keep keys", rel)
		}
	}
	_, _, err = Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{Now: func() time.Time { return time.Now().Add(11 * 365 * 24 * time.Hour) }})
	if err == nil || !strings.Contains(err.Error(), "etcd/ca.crt") || !strings.Contains(err.Error(), "expired") {
		t.Errorf("error %v, want the expired etcd CA named", err)
	}
}

const dualLab = `apiVersion: kubelab.dev/v1alpha1
kind: Lab
name: t
network: {cidr6: "fd00:1::/64"}
clusters:
- name: two
  index: 2
  kubernetesVersion: v1.37.2
  ipFamily: dual
  nodes:
  - {name: a, roles: [etcd, control-plane, worker]}
`

func TestDualStackSANs(t *testing.T) {
	p := mustPlan(t, dualLab)
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	c := p.Clusters[0]
	n := c.Nodes[0]
	cases := map[string][]string{
		APIServer:           {n.Address.String(), n.Address6.String(), "::1", "127.0.0.1", c.APIServiceIP.String(), c.ServiceCIDR6.Addr().Next().String(), p.Network.Gateway.String(), p.Network.Gateway6.String()},
		EtcdServer("a"):     {n.Address.String(), n.Address6.String(), "::1", "127.0.0.1"},
		EtcdPeer("a"):       {n.Address.String(), n.Address6.String()},
		KubeletServing("a"): {n.Address.String(), n.Address6.String()},
	}
	for name, ips := range cases {
		crt, _, err := cl.PEM(name)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := parseCert(crt)
		if !n.Address6.IsValid() {
			t.Fatal("plan gave the node no IPv6 address")
		}
		for _, ip := range ips {
			if err := cert.VerifyHostname(ip); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		if len(cert.IPAddresses) != len(ips) {
			t.Errorf("%s: IP SANs %v, want %v", name, ipStrings(cert.IPAddresses), ips)
		}
	}
}

func TestRSAOption(t *testing.T) {
	if testing.Short() {
		t.Skip("RSA key generation takes seconds")
	}
	p := mustPlan(t, testLab)
	cl, _, err := Ensure(t.TempDir(), p.Lab, p.Clusters[0], p.Network, Options{KeyAlgorithm: RSA2048})
	if err != nil {
		t.Fatal(err)
	}
	crt, _, _ := cl.PEM(APIServer)
	cert, _ := parseCert(crt)
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		t.Fatalf("key %T, want RSA", cert.PublicKey)
	}
	if cert.KeyUsage&0x4 == 0 { // KeyEncipherment
		t.Error("RSA leaf without KeyEncipherment")
	}
	if _, _, err := Ensure(t.TempDir(), p.Lab, p.Clusters[0], p.Network, Options{KeyAlgorithm: "dsa"}); err == nil {
		t.Error("unknown key algorithm accepted")
	}
}

func TestRemovedNodeFilesAreReportedNotDeleted(t *testing.T) {
	dir := t.TempDir()
	mustEnsure(t, dir, mustPlan(t, testLab+"  - {name: w3, roles: [worker]}\n"), 0)
	before := snapshot(t, dir)
	cl, rep := mustEnsure(t, dir, mustPlan(t, testLab), 0)
	if len(rep.Changes) != 0 {
		t.Errorf("changes %v, want none", rep.Changes)
	}
	want := []string{"kubeconfigs/kubelet-w3.kubeconfig", "kubelet-serving-w3.crt", "kubelet-serving-w3.key", "kubelet-w3.crt", "kubelet-w3.key"}
	if !slices.Equal(rep.Unused, want) {
		t.Errorf("unused %v, want %v", rep.Unused, want)
	}
	if !strings.Contains(rep.String(), "kubelet-w3.key is no longer needed") {
		t.Errorf("report does not say so:\n%s", rep)
	}
	assertSame(t, before, snapshot(t, dir))
	if _, err := cl.Kubeconfig(KubeletClient("w3")); err == nil {
		t.Error("removed node still has a kubeconfig in memory")
	}
}
