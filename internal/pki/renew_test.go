package pki

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRenew re-issues named leaves: new serial and dates, same or new key,
// the kubeconfigs embedding them rewritten, everything else byte for byte.
func TestRenew(t *testing.T) {
	for _, newKeys := range []bool{false, true} {
		t.Run(map[bool]string{false: "same key", true: "new key"}[newKeys], func(t *testing.T) {
			p := mustPlan(t, testLab)
			dir := t.TempDir()
			old, _ := mustEnsure(t, dir, p, 0)
			before := snapshot(t, old.Dir)
			later := time.Now().Add(48 * time.Hour)
			renew := map[string]bool{APIServer: true, Admin: true}
			cl, rep, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{Renew: renew, NewKeys: newKeys, Now: func() time.Time { return later }})
			if err != nil {
				t.Fatal(err)
			}
			renewed := map[string]bool{}
			for _, c := range rep.Changes {
				if c.Action == Renewed {
					renewed[c.Name] = true
				}
			}
			if len(renewed) != 2 || !renewed[APIServer] || !renewed[Admin] {
				t.Fatalf("renewed %v, want apiserver and admin; report:\n%s", renewed, rep)
			}
			for name := range renew {
				oc, nc := old.creds[name].cert, cl.creds[name].cert
				if oc.SerialNumber.Cmp(nc.SerialNumber) == 0 {
					t.Errorf("%s: serial unchanged", name)
				}
				if !nc.NotAfter.After(oc.NotAfter) {
					t.Errorf("%s: NotAfter %v not after the old %v", name, nc.NotAfter, oc.NotAfter)
				}
				if sameKey := bytes.Equal(old.creds[name].keyPEM, cl.creds[name].keyPEM); sameKey == newKeys {
					t.Errorf("%s: key kept=%v with NewKeys=%v", name, sameKey, newKeys)
				}
				if why := mismatch(nc, cl.creds[name].spec, cl.creds[cl.creds[name].spec.CA].cert, later); why != "" {
					t.Errorf("%s: renewed certificate does not serve its spec: %s", name, why)
				}
			}
			after := snapshot(t, cl.Dir)
			for rel, st := range before {
				changed := !bytes.Equal(st.data, after[rel].data)
				want := rel == "apiserver.crt" || rel == "admin.crt" || rel == "kubeconfigs/admin.kubeconfig" ||
					(newKeys && (rel == "apiserver.key" || rel == "admin.key"))
				if changed != want {
					t.Errorf("%s: changed=%v, want %v", rel, changed, want)
				}
				if after[rel].mode != st.mode {
					t.Errorf("%s: mode %v became %v", rel, st.mode, after[rel].mode)
				}
			}
		})
	}
}

func TestRenewRefusesCA(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	mustEnsure(t, dir, p, 0)
	before := snapshot(t, Dir(dir, p.Clusters[0].Name))
	_, _, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{Renew: map[string]bool{KubernetesCA: true}})
	if err == nil || !strings.Contains(err.Error(), "is a CA") {
		t.Fatalf("renewing a CA: %v", err)
	}
	after := snapshot(t, Dir(dir, p.Clusters[0].Name))
	for rel, st := range before {
		if !bytes.Equal(st.data, after[rel].data) {
			t.Errorf("%s changed although the renewal was refused", rel)
		}
	}
}

func TestCertNames(t *testing.T) {
	p := mustPlan(t, testLab)
	leaves, cas := CertNames(p.Clusters[0], p.Network)
	if strings.Join(cas, " ") != "etcd/ca ca front-proxy-ca apps-ca" {
		t.Errorf("CAs %v", cas)
	}
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	if got, want := strings.Join(append(cas, leaves...), " "), strings.Join(cl.Names(), " "); got != want {
		t.Errorf("CertNames %s\nEnsure    %s", got, want)
	}
}

// TestEncryptionConfig: one key at first, kept on a rerun, and what
// rotation writes parses back to the same keys in the same order.
func TestEncryptionConfig(t *testing.T) {
	p := mustPlan(t, testLab)
	dir := t.TempDir()
	cl, _ := mustEnsure(t, dir, p, 0)
	keys, err := ReadEncryptionKeys(cl.Dir)
	if err != nil || len(keys) != 1 || keys[0].Name != "key1" || len(keys[0].Secret) != 32 {
		t.Fatalf("first keys %v, %v", keys, err)
	}
	if !strings.Contains(string(cl.EncryptionConfig()), "secretbox:") || !strings.Contains(string(cl.EncryptionConfig()), "identity: {}") {
		t.Errorf("configuration:\n%s", cl.EncryptionConfig())
	}
	again, _ := mustEnsure(t, dir, p, 0)
	if !bytes.Equal(again.EncryptionConfig(), cl.EncryptionConfig()) {
		t.Error("a rerun changed the encryption configuration")
	}
	k2, err := NewEncryptionKey(keys)
	if err != nil || k2.Name != "key2" || bytes.Equal(k2.Secret, keys[0].Secret) {
		t.Fatalf("new key %v %v", k2.Name, err)
	}
	if err := WriteEncryptionKeys(cl.Dir, []EncryptionKey{k2, keys[0]}); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEncryptionKeys(cl.Dir)
	if err != nil || len(got) != 2 || got[0].Name != "key2" || !bytes.Equal(got[1].Secret, keys[0].Secret) {
		t.Fatalf("read back %v %v", got, err)
	}
	if st, _ := os.Stat(filepath.Join(cl.Dir, EncryptionConfigFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	for _, bad := range []string{"kind: Other\n", "not yaml: [", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n"} {
		if _, err := ParseEncryptionConfig([]byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
	os.WriteFile(filepath.Join(cl.Dir, EncryptionConfigFile), []byte("garbage"), 0o600)
	if _, _, err := Ensure(dir, p.Lab, p.Clusters[0], p.Network, Options{}); err == nil || !strings.Contains(err.Error(), "restore it") {
		t.Errorf("unreadable configuration: %v", err)
	}
}

func FuzzParseEncryptionConfig(f *testing.F) {
	good, _ := EncryptionConfig([]EncryptionKey{{Name: "key1", Secret: make([]byte, 32)}})
	f.Add(good)
	f.Add([]byte("kind: EncryptionConfiguration"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseEncryptionConfig(data)
		if err != nil {
			return
		}
		for _, k := range keys {
			if len(k.Secret) != 32 {
				t.Fatalf("accepted a %d-byte key", len(k.Secret))
			}
		}
	})
}
