package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/verify"
)

// RenewRequest is what `kubelab certs renew` asks for.
type RenewRequest struct {
	Cluster string
	Names   []string // leaf certificates; ignored with All
	All     bool
	NewKeys bool
}

// cluster finds a cluster of the plan by name, naming the others if not.
func (e *Env) cluster(name string) (plan.Cluster, error) {
	var names []string
	for _, c := range e.Plan.Clusters {
		if c.Name == name {
			return c, nil
		}
		names = append(names, c.Name)
	}
	return plan.Cluster{}, fmt.Errorf("no cluster %q in lab.yaml; clusters are %s", name, strings.Join(names, ", "))
}

// renewNames checks the requested names against the cluster's leaves.
func renewNames(c plan.Cluster, n plan.Network, req RenewRequest) ([]string, error) {
	leaves, cas := pki.CertNames(c, n)
	if req.All {
		if len(req.Names) > 0 {
			return nil, fmt.Errorf("give certificate names or --all, not both")
		}
		return leaves, nil
	}
	if len(req.Names) == 0 {
		return nil, fmt.Errorf("name the certificates to renew, or use --all (kubelab certs %s lists them)", c.Name)
	}
	for _, name := range req.Names {
		switch {
		case slices.Contains(cas, name):
			return nil, fmt.Errorf("%s is a CA of cluster %s; renew re-issues leaf certificates only (rotate a CA with kubelab certs rotate-ca %s --ca %s)", name, c.Name, c.Name, pki.AliasOf(name))
		case !slices.Contains(leaves, name):
			return nil, fmt.Errorf("cluster %s has no certificate %q; its leaf certificates are: %s", c.Name, name, strings.Join(leaves, ", "))
		}
	}
	return req.Names, nil
}

// RenewPhases re-issues leaf certificates and puts them on the running
// nodes: etcd members first, then control planes, then the rest, one node
// at a time, each node's restarted components healthy before the next
// node is touched. Then it checks that every endpoint serves the
// certificate on disk. Nothing is changed until every node answers.
func (e *Env) RenewPhases(ctx context.Context, req RenewRequest) ([]Phase, error) {
	c, err := e.cluster(req.Cluster)
	if err != nil {
		return nil, err
	}
	names, err := renewNames(c, e.Plan.Network, req)
	if err != nil {
		return nil, err
	}
	e.Clusters = []string{c.Name}
	renew := map[string]bool{}
	for _, n := range names {
		renew[n] = true
	}
	var configs map[string]nodeconfig.Node
	keys := "with their keys"
	if req.NewKeys {
		keys = "with new keys"
	}
	return []Phase{
		{Name: "check", Describe: func() string { return "check that every node of " + c.Name + " runs and answers ssh" },
			Run: func(ctx context.Context) error { return e.requireRunning(ctx, c) }},
		{Name: "issue", Describe: func() string {
			return fmt.Sprintf("re-issue %d certificates %s: %s", len(names), keys, strings.Join(names, ", "))
		},
			Run: func(ctx context.Context) error {
				configs, err = e.rerender(c, func(in *RenderInput) error {
					in.Renew, in.NewKeys = renew, req.NewKeys
					return nil
				})
				return err
			}},
		{Name: "deliver", Describe: func() string {
			return "copy them to the nodes (etcd, control planes, workers; one node at a time) and restart what reads them"
		},
			Run: func(ctx context.Context) error { return e.deliverAll(ctx, c, configs) }},
		{Name: "verify", Describe: func() string {
			return "check that every endpoint serves the certificate on disk, and the nodes are Ready"
		},
			Run: func(ctx context.Context) error { return e.verifyServing(ctx, c) }},
		{Name: "kubeconfig", Describe: func() string { return "write the cluster's admin kubeconfig again (and the user's context)" },
			Run: func(ctx context.Context) error { return e.writeKubeconfigs([]plan.Cluster{c}) }},
	}, nil
}

// requireRunning fails, before anything is changed, unless every node of
// c is running and answers ssh.
func (e *Env) requireRunning(ctx context.Context, c plan.Cluster) error {
	down, err := e.notRunning(ctx, c)
	if err != nil {
		return err
	}
	if len(down) > 0 {
		return fmt.Errorf("nothing was changed: %s; run kubelab start first", strings.Join(down, ", "))
	}
	for _, n := range c.Nodes {
		e.Progress.Status(n.Name, "ssh")
		if _, err := e.sshOutput(ctx, n, "true"); err != nil {
			e.Progress.Final(n.Name, "no answer")
			return fmt.Errorf("nothing was changed: %w", err)
		}
		e.Progress.Final(n.Name, "answers")
	}
	return nil
}

// notRunning lists the nodes of c whose VM does not run ("w1 is stopped").
func (e *Env) notRunning(ctx context.Context, c plan.Cluster) ([]string, error) {
	var down []string
	for _, n := range c.Nodes {
		m, err := e.Machine(c, n)
		if err != nil {
			return nil, err
		}
		st, err := e.Driver.State(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if st != driver.StateRunning {
			down = append(down, fmt.Sprintf("%s is %s", n.Name, st))
		}
	}
	return down, nil
}

// rerender renders cluster c after change (which may alter the input or
// the PKI on disk) and returns each node's configuration.
func (e *Env) rerender(c plan.Cluster, change func(*RenderInput) error) (map[string]nodeconfig.Node, error) {
	in := RenderInput{Layout: e.Layout, Lab: e.Lab, Plan: e.Plan, Versions: e.Versions, Clusters: []string{c.Name}}
	if err := change(&in); err != nil {
		return nil, err
	}
	res, err := Render(in)
	if err != nil {
		return nil, err
	}
	for _, rep := range res.PKI {
		for _, line := range strings.Split(rep.String(), "\n") {
			fmt.Fprintln(e.out(), "    "+line)
		}
	}
	out := map[string]nodeconfig.Node{}
	for _, rn := range res.Nodes {
		out[rn.Node] = rn.Config
	}
	return out, nil
}

// deliveryOrder: etcd members, then control planes, then the rest, so a
// component never trusts or presents a certificate its peers do not have
// yet for longer than one node's restart.
func deliveryOrder(c plan.Cluster) []plan.Node {
	rank := func(n plan.Node) int {
		switch {
		case n.HasRole(spec.RoleEtcd):
			return 0
		case n.HasRole(spec.RoleControlPlane):
			return 1
		}
		return 2
	}
	nodes := slices.Clone(c.Nodes)
	slices.SortStableFunc(nodes, func(a, b plan.Node) int { return rank(a) - rank(b) })
	return nodes
}

// deliverAll brings every node of c to its configuration in configs: it
// asks each node what it holds, copies what differs and restarts what
// reads it, one node at a time in deliveryOrder.
func (e *Env) deliverAll(ctx context.Context, c plan.Cluster, configs map[string]nodeconfig.Node) error {
	for _, n := range deliveryOrder(c) {
		cfg, ok := configs[n.Name]
		if !ok {
			return fmt.Errorf("no configuration rendered for node %s", n.Name)
		}
		e.Progress.Status(n.Name, "comparing its files")
		have, err := e.nodeFiles(ctx, n, cfg.Paths())
		if err != nil {
			e.Progress.Final(n.Name, "failed")
			return err
		}
		ch := nodeconfig.DiffState(have, cfg)
		if ch.Empty() {
			e.Progress.Final(n.Name, "up to date")
			continue
		}
		e.Progress.Status(n.Name, fmt.Sprintf("copying %d files", len(ch.Files)+len(ch.Units)))
		r, err := e.deliver(ctx, n, ch)
		if err != nil {
			e.Progress.Final(n.Name, "failed")
			return err
		}
		for _, u := range ch.Restart {
			e.Progress.Status(n.Name, "waiting for "+u)
			if err := e.waitRestarted(ctx, c, n, u, r); err != nil {
				e.Progress.Final(n.Name, u+" not back")
				return fmt.Errorf("node %s: %s after the restart: %w\n%s", n.Name, u, err, e.journalOf(ctx, n, u))
			}
		}
		e.Progress.Final(n.Name, fmt.Sprintf("%d files, restarted %s", len(ch.Files)+len(ch.Units), strings.Join(ch.Restart, " ")))
	}
	return nil
}

// journalOf is the tail of a unit's journal on a node, for error messages.
func (e *Env) journalOf(ctx context.Context, n plan.Node, unit string) string {
	out, err := e.sshOutput(ctx, n, "journalctl -u "+unit+" -n 15 --no-pager")
	if err != nil {
		return "(journal unavailable: " + err.Error() + ")"
	}
	return "last lines of " + unit + " on " + n.Name + ":\n" + out
}

// Timeout of each component's return after a restart, under emulation.
const restartTimeout = 10 * time.Minute

// waitRestarted waits until a restarted component works again, judged by
// what only the new process can produce: a healthy answer over mTLS, a
// lease renewed after the restart (node clock), a fresh proxy sync.
func (e *Env) waitRestarted(ctx context.Context, c plan.Cluster, n plan.Node, unit string, r restart) error {
	ctx, cancel := context.WithTimeout(ctx, restartTimeout)
	defer cancel()
	if err := e.waitNewProcess(ctx, n, unit, r.oldPIDs[unit]); err != nil {
		return err
	}
	// The old process may still renew a lease in the moment between the
	// clock reading and its stop; a new one needs seconds to start.
	since := r.at.Add(2 * time.Second)
	creds, err := e.readCreds(c)
	if err != nil {
		return err
	}
	status := func(err error) { e.Progress.Status(n.Name, unit+": "+waiting(err.Error())) }
	check := func(fn func(context.Context) error) error {
		return poll(ctx, 3*time.Second, func(ctx context.Context) error {
			err := fn(ctx)
			if err != nil {
				status(err)
			}
			return err
		})
	}
	switch unit {
	case "etcd.service":
		ca, _ := creds.CACert(pki.EtcdCA)
		cert, key, _ := creds.PEM(pki.EtcdAPIServerClient)
		return check(func(ctx context.Context) error {
			return etcdHealthy(ctx, "https://"+net.JoinHostPort(n.Address.String(), "2379"), ca, cert, key)
		})
	case "kube-apiserver.service":
		cfg, err := e.restConfig(c, pki.Admin)
		if err != nil {
			return err
		}
		cfg.Host = "https://" + net.JoinHostPort(n.Address.String(), fmt.Sprint(nodeconfig.APIServerPort))
		return verify.WaitAPIReady(ctx, cfg, verify.Observe(func(_, state string) {
			if state != "ready" {
				e.Progress.Status(n.Name, unit+": "+waiting(state))
			}
		}))
	case "kubelet.service":
		if err := check(func(ctx context.Context) error { return e.leaseRenewed(ctx, c, "kube-node-lease", n.Name, since) }); err != nil {
			return err
		}
		// A starting kubelet reports NotReady for a few seconds before its
		// runtime checks pass; wait (a bounded while) for its own Ready.
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := poll(rctx, 3*time.Second, func(ctx context.Context) error { return e.readySince(ctx, c, n.Name, since) }); err != nil {
			fmt.Fprintf(e.out(), "    %s: no Ready status from the restarted kubelet within a minute (%v); going on\n", n.Name, err)
		}
		return nil
	case "kube-controller-manager.service":
		return check(func(ctx context.Context) error {
			return e.leaseRenewed(ctx, c, "kube-system", "kube-controller-manager", since)
		})
	case "kube-scheduler.service":
		return check(func(ctx context.Context) error { return e.leaseRenewed(ctx, c, "kube-system", "kube-scheduler", since) })
	case "kube-proxy.service":
		return check(func(ctx context.Context) error { return proxySynced(ctx, n, since) })
	}
	return check(func(ctx context.Context) error {
		out, err := e.sshOutput(ctx, n, "systemctl is-active "+unit)
		if err != nil {
			return fmt.Errorf("%s", strings.TrimSpace(out))
		}
		return nil
	})
}

// readCreds loads the cluster's PKI as it is on disk.
func (e *Env) readCreds(c plan.Cluster) (*pki.Cluster, error) {
	opts, err := pkiOptions(e.Lab, c)
	if err != nil {
		return nil, err
	}
	creds, _, err := pki.Ensure(e.Layout.Dir, e.Lab.Name, c, e.Plan.Network, opts)
	return creds, err
}

// leaseRenewed checks that a lease was renewed after since. A leader lease
// held by another control plane counts too: the component works.
func (e *Env) leaseRenewed(ctx context.Context, c plan.Cluster, namespace, name string, since time.Time) error {
	cs, err := e.clientset(c)
	if err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := cs.CoordinationV1().Leases(namespace).Get(qctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(since) {
		return fmt.Errorf("lease %s/%s last renewed %v, before the restart", namespace, name, l.Spec.RenewTime)
	}
	return nil
}

// readySince checks that node reports Ready, in a status its kubelet
// posted after since (node clock).
func (e *Env) readySince(ctx context.Context, c plan.Cluster, node string, since time.Time) error {
	cs, err := e.clientset(c)
	if err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nd, err := cs.CoreV1().Nodes().Get(qctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, cond := range nd.Status.Conditions {
		if cond.Type != "Ready" {
			continue
		}
		if cond.Status != "True" || !cond.LastHeartbeatTime.After(since) {
			return fmt.Errorf("Ready=%s (%s), last reported %s", cond.Status, cond.Reason, cond.LastHeartbeatTime.Format(time.RFC3339))
		}
		return nil
	}
	return fmt.Errorf("node %s has no Ready condition", node)
}

// proxySynced asks kube-proxy's health endpoint whether it synced its
// rules after since (both on the node's clock).
func proxySynced(ctx context.Context, n plan.Node, since time.Time) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(n.Address.String(), "10256") + "/healthz"
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	var h struct {
		LastUpdated time.Time `json:"lastUpdated"`
	}
	resp, err := requestJSON(qctx, client, http.MethodGet, url, nil, 4096, &h)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !h.LastUpdated.After(since) {
		return fmt.Errorf("kube-proxy: %s, last sync %s", resp.Status, h.LastUpdated.Format(time.RFC3339))
	}
	return nil
}

// servingEndpoint is a TLS port of a node and the certificate it must serve.
type servingEndpoint struct {
	node   plan.Node
	port   int
	cert   string // credential name
	ca     string
	client string // client certificate to present, "" for none
}

func servingEndpoints(c plan.Cluster) []servingEndpoint {
	var out []servingEndpoint
	for _, n := range c.Nodes {
		if n.HasRole(spec.RoleEtcd) {
			out = append(out,
				servingEndpoint{n, nodeconfig.EtcdClientPort, pki.EtcdServer(n.Name), pki.EtcdCA, pki.EtcdAPIServerClient},
				servingEndpoint{n, nodeconfig.EtcdPeerPort, pki.EtcdPeer(n.Name), pki.EtcdCA, pki.EtcdAPIServerClient})
		}
		if n.HasRole(spec.RoleControlPlane) {
			out = append(out, servingEndpoint{n, nodeconfig.APIServerPort, pki.APIServer, pki.KubernetesCA, ""})
		}
		if n.HasRole(spec.RoleWorker) {
			out = append(out, servingEndpoint{n, 10250, pki.KubeletServing(n.Name), pki.KubernetesCA, pki.APIServerKubeletClient})
		}
	}
	return out
}

// verifyServing dials every TLS endpoint of the cluster, verifies its chain
// and address against the cluster's CA, and compares the certificate with
// the one on disk; then it checks that the nodes are Ready.
func (e *Env) verifyServing(ctx context.Context, c plan.Cluster) error {
	creds, err := e.readCreds(c)
	if err != nil {
		return err
	}
	var wrong []string
	for _, ep := range servingEndpoints(c) {
		addr := net.JoinHostPort(ep.node.Address.String(), fmt.Sprint(ep.port))
		want, _, err := creds.PEM(ep.cert)
		if err != nil {
			return err
		}
		got, err := servedCert(ctx, creds, addr, ep)
		switch {
		case err != nil:
			wrong = append(wrong, fmt.Sprintf("%s (%s): %v", addr, ep.cert, err))
		case !bytes.Equal(pemBody(want), got.Raw):
			wrong = append(wrong, fmt.Sprintf("%s serves serial %x, but %s on disk has another", addr, got.SerialNumber, ep.cert))
		default:
			e.Progress.Status(ep.node.Name, fmt.Sprintf(":%d serves %s serial %x", ep.port, ep.cert, got.SerialNumber))
		}
	}
	for _, n := range c.Nodes {
		e.Progress.Final(n.Name, "serves what is on disk")
	}
	if len(wrong) > 0 {
		return fmt.Errorf("endpoints not serving the renewed certificates:\n  %s", strings.Join(wrong, "\n  "))
	}
	return e.waitNodes(ctx, []plan.Cluster{c}, restartTimeout)
}

// servedCert completes a TLS handshake with ep and returns its leaf after
// checking it against the endpoint's CA and address.
func servedCert(ctx context.Context, creds *pki.Cluster, addr string, ep servingEndpoint) (*x509.Certificate, error) {
	caPEM, err := creds.CACert(ep.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: ep.node.Address.String(), MinVersion: tls.VersionTLS12}
	if ep.client != "" {
		cert, key, err := creds.PEM(ep.client)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return nil, fmt.Errorf("no certificate")
	}
	return state.PeerCertificates[0], nil
}

// pemBody is the DER of the first certificate in p.
func pemBody(p []byte) []byte {
	block, _ := pem.Decode(p)
	if block == nil {
		return nil
	}
	return block.Bytes
}
