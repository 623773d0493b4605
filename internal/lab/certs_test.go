package lab

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/pki"
)

func TestRenewNames(t *testing.T) {
	e, _ := snapshotEnv(t)
	p := e.Plan
	c := p.Clusters[0]
	leaves, _ := pki.CertNames(c, p.Network)
	for _, tc := range []struct {
		req  RenewRequest
		want string // error fragment, "" for success
		n    int
	}{
		{RenewRequest{All: true}, "", len(leaves)},
		{RenewRequest{Names: []string{pki.APIServer, pki.Admin}}, "", 2},
		{RenewRequest{}, "or use --all", 0},
		{RenewRequest{All: true, Names: []string{pki.Admin}}, "not both", 0},
		{RenewRequest{Names: []string{pki.EtcdCA}}, "is a CA", 0},
		{RenewRequest{Names: []string{"apiserverr"}}, `no certificate "apiserverr"`, 0},
	} {
		got, err := renewNames(c, p.Network, tc.req)
		switch {
		case tc.want == "" && (err != nil || len(got) != tc.n):
			t.Errorf("%+v: %v, %d names, want %d", tc.req, err, len(got), tc.n)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestRotationPlan(t *testing.T) {
	k := func(n string) pki.EncryptionKey { return pki.EncryptionKey{Name: n} }
	for _, tc := range []struct {
		keys []pki.EncryptionKey
		cps  int
		want string
	}{
		{[]pki.EncryptionKey{k("key1")}, 1, "write with a new key, rewrite every Secret, drop key1"},
		{[]pki.EncryptionKey{k("key1")}, 3, "add a new key to every API server"},
		{[]pki.EncryptionKey{k("key1"), k("key2")}, 1, "resume: write with key2"},
		{[]pki.EncryptionKey{k("key2"), k("key1")}, 1, "resume: rewrite every Secret with key2, drop key1"},
	} {
		if got := rotationPlan(tc.keys, tc.cps); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%v with %d control planes: %q, want %q", tc.keys, tc.cps, got, tc.want)
		}
	}
}

// TestRenewRefusedOnStoppedNodes: the check phase refuses before the
// issue phase could change anything.
func TestRenewRefusedOnStoppedNodes(t *testing.T) {
	e, d := snapshotEnv(t)
	d.state = driver.StateStopped
	before := snapshot(t, pki.Dir(e.Layout.Dir, "k1"))
	phases, err := e.RenewPhases(context.Background(), RenewRequest{Cluster: "k1", All: true})
	if err != nil {
		t.Fatal(err)
	}
	if phases[0].Name != "check" || phases[1].Name != "issue" {
		t.Fatalf("phases %s, %s: the check must come before the issue", phases[0].Name, phases[1].Name)
	}
	_, err = Runner{}.Run(context.Background(), phases)
	if err == nil || !strings.Contains(err.Error(), "nothing was changed: cp1 is stopped") {
		t.Fatalf("renew on stopped nodes: %v", err)
	}
	if after := snapshot(t, pki.Dir(e.Layout.Dir, "k1")); !maps.Equal(before, after) {
		t.Error("the PKI changed")
	}
	if _, err := e.RenewPhases(context.Background(), RenewRequest{Cluster: "k9", All: true}); err == nil || !strings.Contains(err.Error(), `no cluster "k9"`) {
		t.Errorf("unknown cluster: %v", err)
	}
}
