package e2e

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The security probes attack the running cluster from the lab network (the
// host namespace, where the bridge is): no credentials, credentials from
// the wrong CA, valid credentials without the right, passwords. Each probe
// that must be refused has a positive twin that must succeed, so a probe
// that cannot reach its target does not pass by accident.

// nodeAddrs maps node names to lab addresses, from kubelab status.
func (h *harness) nodeAddrs() map[string]string {
	h.t.Helper()
	out := h.kubelab(shortTimeout, "status", "-o", "json")
	var rows []struct{ Node, Address string }
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		h.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, r := range rows {
		m[r.Node] = r.Address
	}
	return m
}

func (h *harness) pki(name string) string { return filepath.Join(h.dir, "clusters", "k1", "pki", name) }

// inHost runs a command in the host namespace; it returns output and error.
func (h *harness) inHost(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.hostNS}, args...)...).CombinedOutput()
	return string(out), err
}

// httpCode fetches url with curl and extra arguments; "000" when no HTTP
// answer came (TLS refused, connection refused).
func (h *harness) httpCode(url string, args ...string) string {
	out, _ := h.inHost(append([]string{"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", "--noproxy", "*"}, append(args, url)...)...)
	return strings.TrimSpace(out)
}

func (h *harness) expectCode(what, url, want string, args ...string) {
	h.t.Helper()
	if got := h.httpCode(url, args...); got != want {
		h.t.Errorf("%s: %s answered %s, want %s", what, url, got, want)
	} else {
		h.t.Logf("probe ok: %s -> %s", what, got)
	}
}

// securityProbes is the probe suite against the running cluster.
func (h *harness) securityProbes() {
	h.t.Helper()
	addr := h.nodeAddrs()
	cp, w := addr["cp1"], addr["w1"]
	api := "https://" + cp + ":6443"
	caFlags := []string{"--cacert", h.pki("ca.crt")}
	as := func(name string) []string {
		return append(slices.Clone(caFlags), "--cert", h.pki(name+".crt"), "--key", h.pki(name+".key"))
	}
	// A client certificate from a CA the cluster has never seen, naming
	// the most powerful identity there is.
	foreign := filepath.Join(h.dir, "foreign")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", foreign+".key", "-out", foreign+".crt", "-days", "1", "-subj", "/O=system:masters/CN=intruder").CombinedOutput(); err != nil {
		h.t.Fatalf("make a foreign certificate: %v\n%s", err, out)
	}
	foreignFlags := []string{"--cert", foreign + ".crt", "--key", foreign + ".key"}

	// API server: anonymous is 401, a foreign CA is anonymous, admin works.
	h.expectCode("API server, anonymous", api+"/api/v1/namespaces", "401", caFlags...)
	h.expectCode("API server, foreign CA as system:masters", api+"/api/v1/namespaces", "401", append(slices.Clone(caFlags), foreignFlags...)...)
	h.expectCode("API server, admin (control)", api+"/api/v1/namespaces", "200", as("admin")...)

	// Kubelet: anonymous 401, foreign CA 401, an identity of the right CA
	// without nodes/proxy rights 403, the API server's client 200. The
	// read-only port is closed.
	kubelet := "https://" + w + ":10250/pods"
	h.expectCode("kubelet, anonymous", kubelet, "401", caFlags...)
	h.expectCode("kubelet, foreign CA", kubelet, "401", append(slices.Clone(caFlags), foreignFlags...)...)
	h.expectCode("kubelet, kube-proxy's identity", kubelet, "403", as("kube-proxy")...)
	h.expectCode("kubelet, the API server's kubelet client (control)", kubelet, "200", as("apiserver-kubelet-client")...)
	h.expectCode("kubelet read-only port", "http://"+w+":10255/pods", "000")

	// etcd: no client certificate and a certificate of another CA (the
	// cluster's own Kubernetes CA) are refused in the handshake.
	etcd := "https://" + cp + ":2379/health"
	etcdCA := []string{"--cacert", h.pki("etcd/ca.crt")}
	h.expectCode("etcd, no client certificate", etcd, "000", etcdCA...)
	h.expectCode("etcd, Kubernetes-CA client (admin)", etcd, "000", append(slices.Clone(etcdCA), "--cert", h.pki("admin.crt"), "--key", h.pki("admin.key"))...)
	h.expectCode("etcd, foreign CA", etcd, "000", append(slices.Clone(etcdCA), foreignFlags...)...)
	h.expectCode("etcd, the API server's etcd client (control)", etcd, "200",
		append(slices.Clone(etcdCA), "--cert", h.pki("etcd/apiserver-client.crt"), "--key", h.pki("etcd/apiserver-client.key"))...)

	// Node authorizer: w1's kubelet credentials cannot read a Secret no pod
	// on w1 uses; admin can.
	marker := "kubelab-probe-" + randomSuffix()
	if out, err := h.kubectl("create", "secret", "generic", "probe", "--from-literal=value="+marker); err != nil {
		h.t.Fatalf("create secret: %v\n%s", err, out)
	}
	secret := api + "/api/v1/namespaces/default/secrets/probe"
	h.expectCode("w1's kubelet reads an unrelated Secret", secret, "403", as("kubelet-w1")...)
	h.expectCode("admin reads the Secret (control)", secret, "200", as("admin")...)

	// At rest: the Secret's bytes in etcd are secretbox ciphertext.
	h.requireEncrypted("probe", "key1", marker)

	// sshd offers public keys only, for root and for anyone else.
	for _, node := range []string{"cp1", "w1"} {
		for _, user := range []string{"root", "debian"} {
			out, _ := h.inHost("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
				"-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
				"-o", "ConnectTimeout=20", user+"@"+addr[node], "true")
			if !strings.Contains(out, "Permission denied (publickey)") {
				h.t.Errorf("ssh %s@%s without a key: %q, want only publickey offered", user, node, out)
			}
		}
		cfg := h.kubelab(shortTimeout, "ssh", node, "sshd", "-T")
		for _, want := range []string{"passwordauthentication no", "kbdinteractiveauthentication no", "permitrootlogin without-password", "authenticationmethods publickey"} {
			if !strings.Contains(cfg, want) {
				h.t.Errorf("%s: sshd -T lacks %q", node, want)
			}
		}
	}
	h.secretFileModes()
	h.listeningSockets()
}

// requireEncrypted reads the Secret straight from etcd (its JSON gateway,
// as the API server's etcd client) and checks it is ciphertext of key.
func (h *harness) requireEncrypted(name, key, marker string) {
	h.t.Helper()
	cp := h.nodeAddrs()["cp1"]
	body := fmt.Sprintf(`{"key":"%s"}`, base64.StdEncoding.EncodeToString([]byte("/registry/secrets/default/"+name)))
	out, err := h.inHost("curl", "-s", "--max-time", "20", "--noproxy", "*", "--cacert", h.pki("etcd/ca.crt"),
		"--cert", h.pki("etcd/apiserver-client.crt"), "--key", h.pki("etcd/apiserver-client.key"),
		"-d", body, "https://"+cp+":2379/v3/kv/range")
	var r struct {
		KVs []struct {
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || len(r.KVs) != 1 {
		h.t.Fatalf("read Secret %s from etcd: %v\n%s", name, err, out)
	}
	v := string(r.KVs[0].Value)
	prefix := "k8s:enc:secretbox:v1:" + key + ":"
	if !strings.HasPrefix(v, prefix) || strings.Contains(v, marker) {
		h.t.Errorf("Secret %s in etcd begins %q, want %q and no plain text", name, v[:min(len(v), 40)], prefix)
	} else {
		h.t.Logf("probe ok: Secret %s in etcd is %s... ciphertext (%d bytes)", name, prefix, len(v))
	}
}

// secretFileModes: every private key, kubeconfig and the encryption
// configuration on the nodes is 0600 and root's (every component runs as
// root).
func (h *harness) secretFileModes() {
	h.t.Helper()
	for _, node := range []string{"cp1", "w1"} {
		out := h.kubelab(shortTimeout, "ssh", node, "find", "/etc/kubernetes", "/etc/ssh", "-type", "f",
			`\(`, "-name", "'*.key'", "-o", "-name", "'*.kubeconfig'", "-o", "-name", "encryption-config.yaml", "-o", "-name", "'ssh_host_*_key'", `\)`,
			"-printf", "'%m %u %p\\n'")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) < 3 {
			h.t.Errorf("%s: found only %d secret files:\n%s", node, len(lines), out)
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, "600 root ") {
				h.t.Errorf("%s: secret file not 0600 root: %s", node, l)
			}
		}
	}
}

// listeningSockets compares every listening socket on each node with what
// its roles need. Loopback-only sockets are listed as "lo".
func (h *harness) listeningSockets() {
	h.t.Helper()
	allowed := map[string][]string{
		// control plane with stacked etcd
		"cp1": {"sshd 22 any", "etcd 2379 node", "etcd 2380 node", "etcd 2381 lo",
			"kube-apiserver 6443 any", "kube-controller 10257 lo", "kube-scheduler 10259 lo"},
		// worker
		"w1": {"sshd 22 any", "kubelet 10250 any", "kubelet 10248 lo", "kube-proxy 10249 lo", "kube-proxy 10256 any", "containerd * lo"},
	}
	for node, allow := range allowed {
		out := h.kubelab(shortTimeout, "ssh", node, "ss", "-Htlnup")
		h.t.Logf("listening on %s:\n%s", node, out)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 6 {
				continue
			}
			local := f[4]
			i := strings.LastIndex(local, ":")
			host, port := strings.Trim(local[:i], "[]"), local[i+1:]
			scope := "node"
			switch {
			case host == "*" || host == "0.0.0.0" || host == "::":
				scope = "any"
			case strings.HasPrefix(host, "127.") || host == "::1":
				scope = "lo"
			}
			proc := ""
			if j := strings.Index(line, `(("`); j >= 0 {
				proc = strings.SplitN(line[j+3:], `"`, 2)[0]
			}
			ok := false
			for _, a := range allow {
				p := strings.Fields(a)
				if strings.HasPrefix(proc, p[0]) && (p[1] == "*" || p[1] == port) && p[2] == scope {
					ok = true
				}
			}
			if !ok {
				h.t.Errorf("%s: unexpected listening socket %s %s:%s (%s) by %q", node, f[0], host, port, scope, proc)
			}
		}
	}
}

// requireServed reads the leaf certificate each TLS endpoint presents and
// the one on disk, and reports mismatches.
func (h *harness) requireServed() {
	h.t.Helper()
	addr := h.nodeAddrs()
	for _, ep := range []struct{ node, port, file string }{
		{"cp1", "6443", "apiserver.crt"},
		{"cp1", "2379", "etcd/server-cp1.crt"},
		{"cp1", "2380", "etcd/peer-cp1.crt"},
		{"w1", "10250", "kubelet-serving-w1.crt"},
	} {
		client := ""
		if strings.HasPrefix(ep.file, "etcd/") { // etcd wants an etcd-CA client certificate in the handshake
			client = " -cert " + h.pki("etcd/apiserver-client.crt") + " -key " + h.pki("etcd/apiserver-client.key")
		}
		out, _ := h.inHost("sh", "-c", "openssl s_client -connect "+addr[ep.node]+":"+ep.port+client+" </dev/null 2>/dev/null")
		served := firstCert(out)
		disk := firstCert(readFile(h.t, h.pki(ep.file)))
		switch {
		case served == nil || disk == nil:
			h.t.Errorf("%s:%s: no certificate read (served %v, disk %v)\n%s", ep.node, ep.port, served != nil, disk != nil, out)
		case served.SerialNumber.Cmp(disk.SerialNumber) != 0:
			h.t.Errorf("%s:%s serves serial %x, %s on disk is %x", ep.node, ep.port, served.SerialNumber, ep.file, disk.SerialNumber)
		default:
			h.t.Logf("probe ok: %s:%s serves %s serial %x", ep.node, ep.port, ep.file, served.SerialNumber)
		}
	}
}

func firstCert(text string) *x509.Certificate {
	i := strings.Index(text, "-----BEGIN CERTIFICATE-----")
	if i < 0 {
		return nil
	}
	block, _ := pem.Decode([]byte(text[i:]))
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return c
}

func readFile(t interface{ Fatal(...any) }, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// renewAndRotate renews every certificate and rotates the encryption key
// on the running cluster, watching w1's Ready condition all along.
func (h *harness) renewAndRotate() {
	h.t.Helper()
	before := map[string]*x509.Certificate{}
	for _, f := range []string{"apiserver.crt", "etcd/server-cp1.crt", "kubelet-serving-w1.crt", "admin.crt"} {
		before[f] = firstCert(readFile(h.t, h.pki(f)))
	}
	stop := h.watchReady("w1")
	h.kubelab(upTimeout, "certs", "renew", "--all")
	for f, old := range before {
		now := firstCert(readFile(h.t, h.pki(f)))
		if now == nil || old == nil || now.SerialNumber.Cmp(old.SerialNumber) == 0 || !now.NotAfter.After(old.NotAfter) {
			h.t.Errorf("%s was not renewed", f)
		}
	}
	h.requireServed()
	// The new admin certificate works through the cluster kubeconfig.
	if out, err := h.kubectl("get", "secret", "probe", "-o", "name"); err != nil {
		h.t.Errorf("kubectl with the renewed admin kubeconfig: %v\n%s", err, out)
	}

	h.kubelab(upTimeout, "certs", "rotate-encryption-key")
	out := h.kubelab(shortTimeout, "ssh", "cp1", "grep", "-c", "'name: key'", "/etc/kubernetes/pki/encryption-config.yaml")
	if strings.TrimSpace(out) != "1" {
		h.t.Errorf("after the rotation cp1's encryption configuration has %s keys, want 1", out)
	}
	if cfg := readFile(h.t, h.pki("encryption-config.yaml")); !strings.Contains(cfg, "name: key2") || strings.Contains(cfg, "name: key1") {
		h.t.Errorf("lab's encryption configuration after the rotation:\n%s", cfg)
	}
	value, err := h.kubectl("get", "secret", "probe", "-o", "jsonpath={.data.value}")
	if err != nil {
		h.t.Fatalf("read the Secret after the rotation: %v\n%s", err, value)
	}
	plain, _ := base64.StdEncoding.DecodeString(value)
	if !strings.HasPrefix(string(plain), "kubelab-probe-") {
		h.t.Errorf("Secret after the rotation reads %q", plain)
	}
	h.requireEncrypted("probe", "key2", string(plain))
	if bad := stop(); len(bad) > 0 {
		h.t.Errorf("w1 was not Ready during the renewal and rotation: %v", bad)
	}
}

// watchReady polls a node's Ready condition every 10 s until the returned
// stop is called, which lists the times the node was not Ready in two
// answers in a row, or in the last answer. A kubelet reports NotReady for
// a few seconds right after it starts (its runtime and pod lifecycle
// checks have not run yet), and renewals restart it, so a single answer
// inside such a blip is logged, not failed. Failed requests (the API
// server restarting) are not answers.
func (h *harness) watchReady(node string) func() []string {
	var mu sync.Mutex
	var bad, blips []string
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		prev := "True"
		for {
			out, err := h.kubectl("get", "node", node, "-o",
				`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}`)
			if err == nil {
				status := strings.Fields(out + " -")[0]
				mu.Lock()
				if status != "True" {
					blips = append(blips, time.Now().Format(time.TimeOnly)+" Ready="+strings.TrimSpace(out))
					if prev != "True" {
						bad = append(bad, time.Now().Format(time.TimeOnly)+" "+strings.TrimSpace(out)+" (second answer in a row)")
					}
				}
				prev = status
				mu.Unlock()
			}
			select {
			case <-done:
				if prev != "True" {
					mu.Lock()
					bad = append(bad, "at the end: "+prev)
					mu.Unlock()
				}
				return
			case <-time.After(10 * time.Second):
			}
		}
	}()
	return func() []string {
		close(done)
		<-finished
		mu.Lock()
		defer mu.Unlock()
		if len(blips) > 0 {
			h.t.Logf("%s not Ready in single answers (a kubelet restarting): %v", node, blips)
		}
		return bad
	}
}

// rotateKubernetesCA rotates the cluster's Kubernetes CA on the running
// cluster: afterwards every endpoint presents a certificate of the new
// CA, a client certificate of the old CA is refused, a service-account
// token made before the rotation still works, kubectl works with the
// rewritten kubeconfig, and w1 was never NotReady beyond its kubelet's
// restarts (see watchReady).
func (h *harness) rotateKubernetesCA() {
	h.t.Helper()
	oldCA := firstCert(readFile(h.t, h.pki("ca.crt")))
	oldAdmin := filepath.Join(h.dir, "old-admin")
	for _, ext := range []string{".crt", ".key"} {
		if err := os.WriteFile(oldAdmin+ext, []byte(readFile(h.t, h.pki("admin"+ext))), 0o600); err != nil {
			h.t.Fatal(err)
		}
	}
	token, err := h.kubectl("create", "token", "default", "--duration=2h")
	if err != nil {
		h.t.Fatalf("create a service-account token: %v\n%s", err, token)
	}
	token = strings.TrimSpace(token)
	stop := h.watchReady("w1")
	h.kubelab(upTimeout, "certs", "rotate-ca", "--ca", "kubernetes")
	if bad := stop(); len(bad) > 0 {
		h.t.Errorf("w1 was not Ready during the CA rotation: %v", bad)
	}

	newCA := firstCert(readFile(h.t, h.pki("ca.crt")))
	if newCA == nil || oldCA == nil || newCA.Equal(oldCA) {
		h.t.Fatal("ca.crt was not replaced by a new CA")
	}
	for _, f := range []string{"ca.next.crt", "ca.next.key", "ca-rotation.json"} {
		if _, err := os.Stat(h.pki(f)); !os.IsNotExist(err) {
			h.t.Errorf("%s left in the PKI after the rotation: %v", f, err)
		}
	}
	h.requireServed()
	for _, f := range []string{"apiserver.crt", "kubelet-serving-w1.crt", "admin.crt", "kubelet-w1.crt"} {
		if c := firstCert(readFile(h.t, h.pki(f))); c == nil || c.CheckSignatureFrom(newCA) != nil {
			h.t.Errorf("%s is not signed by the new CA", f)
		}
	}
	api := "https://" + h.nodeAddrs()["cp1"] + ":6443/api"
	ca := []string{"--cacert", h.pki("ca.crt")}
	h.expectCode("API server, admin certificate of the old CA", api, "401", append(slices.Clone(ca), "--cert", oldAdmin+".crt", "--key", oldAdmin+".key")...)
	h.expectCode("API server, admin certificate of the new CA", api, "200", append(slices.Clone(ca), "--cert", h.pki("admin.crt"), "--key", h.pki("admin.key"))...)
	h.expectCode("API server, service-account token from before the rotation", api, "200", append(slices.Clone(ca), "-H", "Authorization: Bearer "+token)...)
	if out, err := h.kubectl("get", "nodes"); err != nil {
		h.t.Errorf("kubectl with the rewritten kubeconfig: %v\n%s", err, out)
	}
}

// extraScenarios: the scenarios that do not fit the CI budget run when
// hack/test.sh --e2e all sets KUBELAB_E2E_EXTRA=1 (see the README's
// end-to-end table for when they last passed).
func extraScenarios() bool { return os.Getenv("KUBELAB_E2E_EXTRA") == "1" }

// rotateEtcdCA rotates the etcd CA on the running cluster: afterwards etcd
// presents certificates of the new CA, a client certificate of the old CA
// is refused, the API server (an etcd client) reads the Secret, and w1
// was never NotReady beyond its kubelet's restarts (see watchReady).
func (h *harness) rotateEtcdCA() {
	h.t.Helper()
	old := filepath.Join(h.dir, "old-etcd-client")
	for _, ext := range []string{".crt", ".key"} {
		if err := os.WriteFile(old+ext, []byte(readFile(h.t, h.pki("etcd/apiserver-client"+ext))), 0o600); err != nil {
			h.t.Fatal(err)
		}
	}
	oldCA := firstCert(readFile(h.t, h.pki("etcd/ca.crt")))
	stop := h.watchReady("w1")
	h.kubelab(upTimeout, "certs", "rotate-ca", "--ca", "etcd")
	if bad := stop(); len(bad) > 0 {
		h.t.Errorf("w1 was not Ready during the etcd CA rotation: %v", bad)
	}
	newCA := firstCert(readFile(h.t, h.pki("etcd/ca.crt")))
	if newCA == nil || oldCA == nil || newCA.Equal(oldCA) {
		h.t.Fatal("etcd/ca.crt was not replaced by a new CA")
	}
	h.requireServed()
	etcd := "https://" + h.nodeAddrs()["cp1"] + ":2379/health"
	ca := []string{"--cacert", h.pki("etcd/ca.crt")}
	h.expectCode("etcd, client certificate of the old etcd CA", etcd, "000", append(slices.Clone(ca), "--cert", old+".crt", "--key", old+".key")...)
	h.expectCode("etcd, client certificate of the new etcd CA", etcd, "200",
		append(slices.Clone(ca), "--cert", h.pki("etcd/apiserver-client.crt"), "--key", h.pki("etcd/apiserver-client.key"))...)
	if out, err := h.kubectl("get", "secret", "probe", "-o", "name"); err != nil {
		h.t.Errorf("the API server reads from etcd after the rotation: %v\n%s", err, out)
	}
}
