package lab

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// RotateEncryptionPhases replaces the key Secrets are encrypted with in
// etcd, in the order that never leaves an API server unable to read a
// Secret: every API server learns the new key, then writes with it, then
// every Secret is rewritten, then the old key goes. The state is the key
// list in the cluster's encryption configuration, so running the command
// again after an interruption continues where it stopped.
func (e *Env) RotateEncryptionPhases(ctx context.Context, cluster string) ([]Phase, error) {
	c, err := e.cluster(cluster)
	if err != nil {
		return nil, err
	}
	e.Clusters = []string{c.Name}
	dir := pki.Dir(e.Layout.Dir, c.Name)
	keys, err := pki.ReadEncryptionKeys(dir)
	if err != nil {
		return nil, err
	}
	if len(keys) > 2 {
		return nil, fmt.Errorf("%s holds %d keys; kubelab rotates from one key (or resumes with two), so remove the keys no Secret uses and run again", pki.EncryptionConfigFile, len(keys))
	}
	return []Phase{
		{Name: "check", Describe: func() string { return "check that every node of " + c.Name + " runs and answers ssh" },
			Run: func(ctx context.Context) error { return e.requireRunning(ctx, c) }},
		{Name: "rotate", Describe: func() string { return rotationPlan(keys, len(c.NodesWithRole(spec.RoleControlPlane))) },
			Run: func(ctx context.Context) error { return e.rotateEncryption(ctx, c) }},
		{Name: "verify", Describe: func() string { return "read every Secret from etcd and check it is encrypted with the new key" },
			Run: func(ctx context.Context) error { return e.verifyEncryption(ctx, c) }},
	}, nil
}

func rotationPlan(keys []pki.EncryptionKey, controlPlanes int) string {
	switch {
	case len(keys) == 2 && keys[1].Number() > keys[0].Number():
		return fmt.Sprintf("resume: write with %s, rewrite every Secret, drop %s", keys[1].Name, keys[0].Name)
	case len(keys) == 2:
		return fmt.Sprintf("resume: rewrite every Secret with %s, drop %s", keys[0].Name, keys[1].Name)
	case controlPlanes > 1:
		return fmt.Sprintf("add a new key to every API server, write with it, rewrite every Secret, drop %s", keys[0].Name)
	}
	return fmt.Sprintf("write with a new key, rewrite every Secret, drop %s", keys[0].Name)
}

// rotateEncryption runs the rotation's remaining steps. Each step changes
// the key list on disk and delivers it (the API servers restart, one
// control plane at a time).
func (e *Env) rotateEncryption(ctx context.Context, c plan.Cluster) error {
	dir := pki.Dir(e.Layout.Dir, c.Name)
	step := func(what string, next func([]pki.EncryptionKey) ([]pki.EncryptionKey, error)) error {
		fmt.Fprintf(e.out(), "    %s\n", what)
		configs, err := e.rerender(c, func(*RenderInput) error {
			keys, err := pki.ReadEncryptionKeys(dir)
			if err != nil {
				return err
			}
			keys, err = next(keys)
			if err != nil {
				return err
			}
			return pki.WriteEncryptionKeys(dir, keys)
		})
		if err != nil {
			return err
		}
		return e.deliverAll(ctx, c, configs)
	}
	keys, err := pki.ReadEncryptionKeys(dir)
	if err != nil {
		return err
	}
	if len(keys) == 1 {
		fresh, err := pki.NewEncryptionKey(keys)
		if err != nil {
			return err
		}
		// With one API server nothing else could meet a Secret written
		// with the new key, so it may write with it at once.
		if len(c.NodesWithRole(spec.RoleControlPlane)) > 1 {
			if err := step("every API server learns "+fresh.Name, func(k []pki.EncryptionKey) ([]pki.EncryptionKey, error) {
				return []pki.EncryptionKey{k[0], fresh}, nil
			}); err != nil {
				return err
			}
		} else if err := pki.WriteEncryptionKeys(dir, []pki.EncryptionKey{keys[0], fresh}); err != nil {
			return err
		}
		keys = []pki.EncryptionKey{keys[0], fresh}
	}
	if keys[1].Number() > keys[0].Number() {
		if err := step("the API servers write with "+keys[1].Name, func(k []pki.EncryptionKey) ([]pki.EncryptionKey, error) {
			return []pki.EncryptionKey{k[1], k[0]}, nil
		}); err != nil {
			return err
		}
		keys = []pki.EncryptionKey{keys[1], keys[0]}
	}
	n, err := e.rewriteSecrets(ctx, c)
	if err != nil {
		return fmt.Errorf("rewrite Secrets with %s (run the command again to continue): %w", keys[0].Name, err)
	}
	fmt.Fprintf(e.out(), "    rewrote %d Secrets with %s\n", n, keys[0].Name)
	return step("drop "+keys[1].Name, func(k []pki.EncryptionKey) ([]pki.EncryptionKey, error) {
		return k[:1], nil
	})
}

// rewriteSecrets writes every Secret back unchanged: the API server stores
// an object again when it was read with a key that is not the first.
func (e *Env) rewriteSecrets(ctx context.Context, c plan.Cluster) (int, error) {
	cs, err := e.clientset(c)
	if err != nil {
		return 0, err
	}
	list, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	for i := range list.Items {
		s := &list.Items[i]
		e.Progress.Status(c.Name, fmt.Sprintf("rewriting Secret %d/%d %s/%s", i+1, len(list.Items), s.Namespace, s.Name))
		if _, err := cs.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return i, fmt.Errorf("Secret %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	e.Progress.Final(c.Name, fmt.Sprintf("rewrote %d Secrets", len(list.Items)))
	return len(list.Items), nil
}

// EncryptedPrefix is how etcd values encrypted with key begin.
func EncryptedPrefix(key string) string {
	return "k8s:enc:" + pki.EncryptionProvider + ":v1:" + key + ":"
}

// verifyEncryption reads every Secret's value straight from etcd (its JSON
// gateway, with the API server's etcd client certificate) and checks that
// the writing key encrypted it.
func (e *Env) verifyEncryption(ctx context.Context, c plan.Cluster) error {
	keys, err := pki.ReadEncryptionKeys(pki.Dir(e.Layout.Dir, c.Name))
	if err != nil {
		return err
	}
	values, err := e.etcdRange(ctx, c, "/registry/secrets/")
	if err != nil {
		return err
	}
	want := EncryptedPrefix(keys[0].Name)
	var wrong []string
	for k, v := range values {
		if !strings.HasPrefix(v, want) {
			p := v
			if len(p) > 24 {
				p = p[:24]
			}
			wrong = append(wrong, fmt.Sprintf("%s starts %q", k, p))
		}
	}
	if len(values) == 0 {
		e.Progress.Final(c.Name, "no Secrets stored yet: nothing to check")
		return nil
	}
	if len(wrong) > 0 {
		return fmt.Errorf("%d of %d Secrets in etcd are not encrypted with %s:\n  %s", len(wrong), len(values), keys[0].Name, strings.Join(wrong, "\n  "))
	}
	e.Progress.Final(c.Name, fmt.Sprintf("%d Secrets in etcd, all %s", len(values), strings.TrimSuffix(want, ":")))
	return nil
}

// etcdRange reads every key under prefix from the first etcd member through
// etcd's JSON gateway (/v3/kv/range), with mTLS.
func (e *Env) etcdRange(ctx context.Context, c plan.Cluster, prefix string) (map[string]string, error) {
	members := c.NodesWithRole(spec.RoleEtcd)
	if len(members) == 0 {
		return nil, fmt.Errorf("cluster %s has no etcd member", c.Name)
	}
	creds, err := e.readCreds(c)
	if err != nil {
		return nil, err
	}
	caPEM, _ := creds.CACert(pki.EtcdCA)
	cert, key, _ := creds.PEM(pki.EtcdAPIServerClient)
	client, err := etcdClient(caPEM, cert, key, 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	end := []byte(prefix)
	end[len(end)-1]++ // the first key after every key with the prefix
	body, _ := json.Marshal(map[string]string{
		"key":       base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end": base64.StdEncoding.EncodeToString(end),
	})
	url := "https://" + net.JoinHostPort(members[0].Address.String(), "2379") + "/v3/kv/range"
	var r struct {
		KVs []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	resp, err := requestJSON(ctx, client, http.MethodPost, url, body, 64<<20, &r)
	if err != nil {
		return nil, fmt.Errorf("etcd range %s: %w", prefix, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("etcd range %s: %s", prefix, resp.Status)
	}
	out := map[string]string{}
	for _, kv := range r.KVs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out, nil
}
