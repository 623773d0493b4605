package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// CheckOptions tune the smoke check. OptionsFor fills them from the plan.
type CheckOptions struct {
	// Namespace is created for the check and deleted afterwards; default
	// DefaultCheckNamespace. A leftover from an earlier run is removed first.
	Namespace string
	// Nodes are the worker nodes to run on; the first two are used. Empty:
	// the Ready, schedulable nodes the API server knows, by name.
	Nodes []string
	// ClusterDomain; default cluster.local.
	ClusterDomain string
	// NodePort is the port of the NodePort service; it must lie in the
	// cluster's NodePort range. 0 skips the NodePort checks.
	NodePort int
	// NodePortProbe fetches http://<some node>:port/ from outside the
	// cluster (the lab network, or the host through its forward) and returns
	// the body. It is called repeatedly until the body names a server node or
	// the sub-check's timeout passes. Nil skips the outside check.
	NodePortProbe func(ctx context.Context, port int) (string, error)
	// Image runs the servers and clients; default versions.TestImage
	// (preloaded on every node, never pulled).
	Image string
	// Timeout bounds each sub-check; default 4 minutes (pods start slowly
	// on emulated nodes).
	Timeout time.Duration
	// Progress receives one line per sub-check as it finishes.
	Progress io.Writer
	// Keep leaves the namespace in place for debugging.
	Keep bool
}

// clientParallelism is how many client pods run at once.
const clientParallelism = 2

// DefaultCheckTimeout bounds each sub-check.
const DefaultCheckTimeout = 4 * time.Minute

// NodePortOffset places the check's NodePort inside the cluster's range.
const NodePortOffset = 80

// OptionsFor fills CheckOptions from the plan: the cluster's workers, its
// DNS domain and a NodePort inside its range.
func OptionsFor(c plan.Cluster) CheckOptions {
	o := CheckOptions{ClusterDomain: c.ClusterDomain}
	for _, n := range c.NodesWithRole(spec.RoleWorker) {
		o.Nodes = append(o.Nodes, n.Name)
	}
	if c.NodePortFrom > 0 && c.NodePortTo >= c.NodePortFrom {
		o.NodePort = c.NodePortFrom + NodePortOffset
		if o.NodePort > c.NodePortTo {
			o.NodePort = c.NodePortFrom
		}
	}
	return o
}

func (o CheckOptions) withDefaults() CheckOptions {
	if o.Namespace == "" {
		o.Namespace = DefaultCheckNamespace
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.Image == "" {
		o.Image = versions.TestImage
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultCheckTimeout
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// Result is one sub-check.
type Result struct {
	Name     string        `json:"name"`
	Status   string        `json:"status"` // PASS, FAIL, SKIP
	Duration time.Duration `json:"duration"`
	// Detail is the answer on success, the reason for a skip, or on failure
	// the error with the pod's state, events and logs.
	Detail string `json:"detail,omitempty"`
}

// Statuses of a Result.
const (
	Pass = "PASS"
	Fail = "FAIL"
	Skip = "SKIP"
)

// String is the result's report line, failure details indented below it.
func (r Result) String() string {
	line := fmt.Sprintf("%-4s %-60s %7s", r.Status, r.Name, r.Duration.Round(100*time.Millisecond))
	if r.Detail == "" {
		return line
	}
	if r.Status != Fail {
		return line + "  " + r.Detail
	}
	return line + "\n" + indent(r.Detail, "       ")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

// Report is the whole smoke check, sub-checks in a fixed order.
type Report struct {
	Results []Result `json:"results"`
}

// Failed lists the failed sub-checks.
func (r Report) Failed() []Result {
	var out []Result
	for _, x := range r.Results {
		if x.Status == Fail {
			out = append(out, x)
		}
	}
	return out
}

func (r Report) String() string {
	var b strings.Builder
	for _, x := range r.Results {
		b.WriteString(x.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Check runs the smoke check in a throwaway namespace: pod to pod across
// two nodes over the pod network, a ClusterIP service by address and by
// name (kube-proxy), cluster DNS, and a NodePort service from a pod and,
// through opts.NodePortProbe, from outside. Every sub-check runs even when
// another failed; the error lists the failed ones and the report says why.
func Check(ctx context.Context, cfg *rest.Config, opts CheckOptions) (Report, error) {
	opts = opts.withDefaults()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return Report{}, fmt.Errorf("check: client for %s: %w", cfg.Host, err)
	}
	c := &checker{cs: cs, o: opts}
	rep := c.run(ctx)
	if bad := rep.Failed(); len(bad) > 0 {
		var names []string
		for _, r := range bad {
			names = append(names, r.Name)
		}
		return rep, fmt.Errorf("smoke check failed: %s", strings.Join(names, "; "))
	}
	return rep, nil
}

type checker struct {
	cs kubernetes.Interface
	o  CheckOptions

	mu  sync.Mutex
	rep Report
}

func (c *checker) add(r Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Results = append(c.rep.Results, r)
	fmt.Fprintln(c.o.Progress, r.String())
}

// step runs fn as a sub-check and records it.
func (c *checker) step(name string, fn func() (string, error)) bool {
	start := time.Now()
	detail, err := fn()
	r := Result{Name: name, Status: Pass, Duration: time.Since(start), Detail: detail}
	if err != nil {
		r.Status, r.Detail = Fail, err.Error()
	}
	c.add(r)
	return err == nil
}

func (c *checker) skip(name, why string) { c.add(Result{Name: name, Status: Skip, Detail: why}) }

func (c *checker) run(ctx context.Context) Report {
	ns := c.o.Namespace
	var nodeA, nodeB string
	ok := c.step("nodes to run on", func() (string, error) {
		nodes, err := c.pickNodes(ctx)
		if err != nil {
			return "", err
		}
		nodeA, nodeB = nodes[0], nodes[0]
		if len(nodes) > 1 {
			nodeB = nodes[1]
			return nodeA + ", " + nodeB, nil
		}
		return nodeA + " only: one worker, the cross-node checks run within it", nil
	})
	if !ok {
		return c.rep
	}
	if !c.step("namespace "+ns, func() (string, error) { return "", c.freshNamespace(ctx) }) {
		return c.rep
	}
	if !c.o.Keep {
		defer c.deleteNamespace()
	}

	var srvA, srvB *corev1.Pod
	servers := "server pods on " + nodeA
	if nodeB != nodeA {
		servers += " and " + nodeB
	}
	okServers := c.step(servers, func() (string, error) {
		var err error
		srvA, srvB, err = c.startServers(ctx, nodeA, nodeB)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s, %s", srvA.Status.PodIP, srvB.Status.PodIP), nil
	})

	var web, apiSvc *corev1.Service
	okServices := c.step("service "+WebService+" (ClusterIP)", func() (string, error) {
		var err error
		web, apiSvc, err = c.createServices(ctx)
		if err != nil {
			return "", err
		}
		return "ClusterIP " + web.Spec.ClusterIP, nil
	})
	if !okServers || !okServices {
		c.skip("client checks", "no servers or service to reach")
		return c.rep
	}

	env := checkEnv{
		ns: ns, image: c.o.Image, domain: c.o.ClusterDomain,
		nodeA: nodeA, nodeB: nodeB,
		serverA: srvA.Status.PodIP, serverB: srvB.Status.PodIP,
		webIP: web.Spec.ClusterIP, apiIP: apiSvc.Spec.ClusterIP,
		tries: int(c.o.Timeout / (7 * time.Second)),
	}
	if env.tries < 1 {
		env.tries = 1
	}
	nodePort := c.o.NodePort
	if nodePort != 0 {
		ok := c.step(fmt.Sprintf("service %s (NodePort %d)", NodePortService, nodePort), func() (string, error) {
			ip, err := c.createNodePort(ctx, nodeB)
			if err != nil {
				return "", err
			}
			env.nodePort, env.nodePortTarget, env.nodePortTargetNodeIs = nodePort, ip, nodeB
			return "", nil
		})
		if !ok {
			nodePort = 0
		}
	}
	checks := clientChecks(env)
	results := make([]Result, len(checks)+1)
	var wg sync.WaitGroup
	// A few client pods at a time: every pod sandbox costs a shim and CNI
	// plugin runs, and on an emulated one-vCPU node seven at once starved
	// each other past their timeouts.
	slots := make(chan struct{}, clientParallelism)
	for i, chk := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			results[i] = c.runClient(ctx, chk)
			fmt.Fprintln(c.o.Progress, results[i].String())
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[len(checks)] = c.outsideNodePort(ctx, nodePort, []string{nodeA, nodeB})
		fmt.Fprintln(c.o.Progress, results[len(checks)].String())
	}()
	wg.Wait()
	c.mu.Lock()
	c.rep.Results = append(c.rep.Results, results...)
	c.mu.Unlock()
	return c.rep
}

// pickNodes returns the nodes to pin pods to: opts.Nodes that exist and
// are Ready, or any Ready schedulable nodes.
func (c *checker) pickNodes(ctx context.Context) ([]string, error) {
	list, err := listNodes(ctx, c.cs)
	if err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Node{}
	var ready []string
	for i := range list {
		n := &list[i]
		byName[n.Name] = n
		if nodeProblem(n) == "" && !n.Spec.Unschedulable {
			ready = append(ready, n.Name)
		}
	}
	sort.Strings(ready)
	if len(c.o.Nodes) == 0 {
		if len(ready) == 0 {
			return nil, fmt.Errorf("no Ready, schedulable node (the API server knows %d nodes); run kubectl get nodes", len(list))
		}
		return ready[:min(2, len(ready))], nil
	}
	var out, problems []string
	for _, name := range c.o.Nodes {
		if p := nodeProblem(byName[name]); p != "" {
			problems = append(problems, name+": "+p)
			continue
		}
		out = append(out, name)
		if len(out) == 2 {
			break
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("none of the worker nodes is ready: %s", strings.Join(problems, "; "))
	}
	if len(out) < 2 && len(c.o.Nodes) > 1 {
		return nil, fmt.Errorf("two ready workers needed for the cross-node checks: %s", strings.Join(problems, "; "))
	}
	return out, nil
}

// freshNamespace creates the namespace, first removing a leftover, and
// waits for its default service account (pods are refused without it).
func (c *checker) freshNamespace(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	nsAPI := c.cs.CoreV1().Namespaces()
	ns := c.o.Namespace
	for {
		_, err := nsAPI.Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if err != nil {
			return fmt.Errorf("look for a leftover namespace %s: %w", ns, err)
		}
		if err := nsAPI.Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete leftover namespace %s: %w", ns, err)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return fmt.Errorf("leftover namespace %s from an earlier check is still terminating (%v); is kube-controller-manager running?", ns, err)
		}
	}
	_, err := nsAPI.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: managedBy}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	for {
		_, err := c.cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("service account %s/default: %w", ns, err)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return fmt.Errorf("service account %s/default was not created (%v); kube-controller-manager makes it: is it running?", ns, err)
		}
	}
}

func (c *checker) deleteNamespace() {
	// The check's context may be spent; cleaning up still matters.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err := c.cs.CoreV1().Namespaces().Delete(ctx, c.o.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		fmt.Fprintf(c.o.Progress, "cleanup: delete namespace %s: %v (delete it with kubectl delete namespace %s)\n", c.o.Namespace, err, c.o.Namespace)
		return
	}
	fmt.Fprintf(c.o.Progress, "cleanup: namespace %s deleted (%s)\n", c.o.Namespace, since(start))
}

func (c *checker) startServers(ctx context.Context, nodeA, nodeB string) (*corev1.Pod, *corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	pods := []*corev1.Pod{serverPod(c.o.Namespace, "server-a", nodeA, c.o.Image), serverPod(c.o.Namespace, "server-b", nodeB, c.o.Image)}
	for _, p := range pods {
		if _, err := c.cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return nil, nil, fmt.Errorf("create pod %s: %w", p.Name, err)
		}
	}
	var running [2]*corev1.Pod
	for i, p := range pods {
		got, err := c.waitPod(ctx, p.Name, func(p *corev1.Pod) (bool, error) {
			if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
				return false, fmt.Errorf("server exited (phase %s)", p.Status.Phase)
			}
			return podReady(p) && p.Status.PodIP != "", nil
		})
		if err != nil {
			return nil, nil, err
		}
		running[i] = got
	}
	return running[0], running[1], nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPod polls a pod until done says so; failures and timeouts come with
// the pod's state, its events and its logs.
func (c *checker) waitPod(ctx context.Context, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	var last *corev1.Pod
	for {
		p, err := c.cs.CoreV1().Pods(c.o.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = p
			ok, derr := done(p)
			if derr != nil {
				return p, fmt.Errorf("pod %s: %w\n%s", name, derr, c.podDiagnostics(p))
			}
			if ok {
				return p, nil
			}
		}
		if serr := sleep(ctx, time.Second); serr != nil {
			msg := fmt.Sprintf("pod %s: timed out after %s", name, c.o.Timeout)
			if err != nil {
				msg += ": " + err.Error()
			}
			if last == nil {
				return nil, errors.New(msg)
			}
			return last, fmt.Errorf("%s\n%s", msg, c.podDiagnostics(last))
		}
	}
}

// podDiagnostics gives a pod's state, its events and its log tail. It uses
// a fresh context so a spent check context still yields the diagnosis.
func (c *checker) podDiagnostics(p *corev1.Pod) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "state: %s\n", podState(p))
	evs, err := c.cs.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.name", p.Name).String(),
	})
	if err != nil {
		fmt.Fprintf(&b, "events: %v\n", err)
	} else {
		sort.Slice(evs.Items, func(i, j int) bool { return eventTime(evs.Items[i]).Before(eventTime(evs.Items[j])) })
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "event: %s %s: %s\n", e.Type, e.Reason, strings.TrimSpace(e.Message))
		}
	}
	if logs, err := c.logs(ctx, p.Name); err != nil {
		fmt.Fprintf(&b, "logs: %v\n", err)
	} else if logs != "" {
		fmt.Fprintf(&b, "logs:\n%s\n", indent(tail(logs, 20), "  "))
	}
	return strings.TrimRight(b.String(), "\n")
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logs reads a pod's log; this goes API server -> kubelet, so it also
// proves the API server's kubelet client credentials and RBAC.
func (c *checker) logs(ctx context.Context, pod string) (string, error) {
	raw, err := c.cs.CoreV1().Pods(c.o.Namespace).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("read logs of pod %s: %w", pod, err)
	}
	return string(raw), nil
}

func (c *checker) createServices(ctx context.Context) (web, api *corev1.Service, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	svcs := c.cs.CoreV1().Services(c.o.Namespace)
	web, err = svcs.Create(ctx, webService(c.o.Namespace), metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create service %s: %w", WebService, err)
	}
	api, err = c.cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("get service default/kubernetes: %w", err)
	}
	return web, api, nil
}

// createNodePort creates the NodePort service and returns the address of
// node, where the in-cluster NodePort check dials it.
func (c *checker) createNodePort(ctx context.Context, node string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	ip, err := c.nodeAddress(ctx, node)
	if err != nil {
		return "", err
	}
	_, err = c.cs.CoreV1().Services(c.o.Namespace).Create(ctx, nodePortService(c.o.Namespace, c.o.NodePort), metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create service %s with nodePort %d (is the port in the API server's --service-node-port-range and free?): %w", NodePortService, c.o.NodePort, err)
	}
	return ip, nil
}

// nodeAddress is a node's InternalIP, the address NodePorts listen on.
func (c *checker) nodeAddress(ctx context.Context, node string) (string, error) {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("address of node %s: %w", node, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address, nil
		}
	}
	return "", fmt.Errorf("node %s reports no InternalIP", node)
}

// runClient starts a client pod and waits for it to exit; it passes when
// the pod succeeded and one line of its log is an accepted answer.
func (c *checker) runClient(ctx context.Context, chk clientCheck) Result {
	start := time.Now()
	r := Result{Name: chk.title}
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	fail := func(err error) Result {
		r.Status, r.Detail, r.Duration = Fail, err.Error(), time.Since(start)
		return r
	}
	if _, err := c.cs.CoreV1().Pods(c.o.Namespace).Create(ctx, chk.pod, metav1.CreateOptions{}); err != nil {
		return fail(fmt.Errorf("create pod %s: %w", chk.pod.Name, err))
	}
	p, err := c.waitPod(ctx, chk.pod.Name, func(p *corev1.Pod) (bool, error) {
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return true, nil
		case corev1.PodFailed:
			return false, errors.New("exited with failure")
		}
		return false, nil
	})
	if err != nil {
		return fail(err)
	}
	out, err := c.logs(ctx, chk.pod.Name)
	if err != nil {
		return fail(err)
	}
	got, ok := answer(out, chk.accept)
	if !ok {
		return fail(fmt.Errorf("pod %s answered, but not with one of %q\n%s", chk.pod.Name, chk.accept, c.podDiagnostics(p)))
	}
	r.Status, r.Duration, r.Detail = Pass, time.Since(start), "answer: "+got+triesNote(out)
	return r
}

// triesNote reports retries, which point at slow kube-proxy or DNS.
func triesNote(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), okMarker+" "); ok && rest != "1 tries" {
			return " (" + rest + ")"
		}
	}
	return ""
}

// outsideNodePort asks the caller's probe for the NodePort until a server
// node answers.
func (c *checker) outsideNodePort(ctx context.Context, nodePort int, servers []string) Result {
	name := fmt.Sprintf("NodePort %d from outside the cluster", nodePort)
	switch {
	case nodePort == 0:
		return Result{Name: "NodePort from outside the cluster", Status: Skip, Detail: "no NodePort service"}
	case c.o.NodePortProbe == nil:
		return Result{Name: name, Status: Skip, Detail: "no probe from outside given"}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	var last string
	for tries := 1; ; tries++ {
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		body, err := c.o.NodePortProbe(pctx, nodePort)
		pcancel()
		if err != nil {
			last = err.Error()
		} else if got, ok := answer(body, servers); ok {
			note := ""
			if tries > 1 {
				note = fmt.Sprintf(" (%d tries)", tries)
			}
			return Result{Name: name, Status: Pass, Duration: time.Since(start), Detail: "answer: " + got + note}
		} else {
			last = fmt.Sprintf("answer %q names none of %q", strings.TrimSpace(body), servers)
		}
		if err := sleep(ctx, 2*time.Second); err != nil {
			return Result{Name: name, Status: Fail, Duration: time.Since(start),
				Detail: fmt.Sprintf("no server answered within %s (%d tries); last: %s", c.o.Timeout, tries, last)}
		}
	}
}
