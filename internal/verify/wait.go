// Package verify proves a cluster works, through client-go: it waits for
// the API server and the nodes, applies kubelab's add-ons with server-side
// apply and runs the smoke check behind `kubelab check` (pod network across
// nodes, services through kube-proxy, cluster DNS, NodePorts).
//
// Every wait takes its deadline from the context and, when it runs out,
// says what it saw last, so a failed `up` points at the component to look
// at.
package verify

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Poll intervals: short enough that a ready cluster is noticed at once,
// long enough not to load an API server running under emulation.
const (
	readyzInterval     = 500 * time.Millisecond
	nodesInterval      = 2 * time.Second
	deploymentInterval = 2 * time.Second
	requestTimeout     = 10 * time.Second
)

// Observer follows a wait while it runs: subject is what the state is
// about (the API server's URL, a node's name, a deployment's
// "namespace/name") and state the latest answer or problem seen, or the
// word the wait ends on ("ready", "available"). It is called from the
// waiting goroutine, and only when a subject's state changes.
type Observer func(subject, state string)

// WaitOption tunes a wait.
type WaitOption func(*waitOptions)

type waitOptions struct {
	observe  Observer
	interval time.Duration // 0: the wait's own interval
	last     map[string]string
}

// Observe has the wait report what it sees to fn as it goes (for live
// progress), not only in its error at the end.
func Observe(fn Observer) WaitOption {
	return func(o *waitOptions) { o.observe = fn }
}

// withInterval overrides the poll interval (tests).
func withInterval(d time.Duration) WaitOption {
	return func(o *waitOptions) { o.interval = d }
}

func newWaitOptions(interval time.Duration, opts []WaitOption) *waitOptions {
	o := &waitOptions{last: map[string]string{}}
	for _, opt := range opts {
		opt(o)
	}
	if o.interval == 0 {
		o.interval = interval
	}
	return o
}

// seen passes a subject's state to the observer when it changed.
func (o *waitOptions) seen(subject, state string) {
	if o.observe == nil {
		return
	}
	if prev, ok := o.last[subject]; ok && prev == state {
		return
	}
	o.last[subject] = state
	o.observe(subject, state)
}

// WaitAPIReady polls the API server's /readyz (authenticated with cfg's
// credentials: anonymous access is off) until it answers 200 or ctx ends.
// The error then carries the last answer, e.g. the failing readiness checks
// or "connection refused". Observe reports each new answer with cfg.Host as
// the subject, and "ready" at the end.
func WaitAPIReady(ctx context.Context, cfg *rest.Config, opts ...WaitOption) error {
	o := newWaitOptions(readyzInterval, opts)
	start := time.Now()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("wait for API server %s: client: %w", cfg.Host, err)
	}
	url := strings.TrimSuffix(cfg.Host, "/") + "/readyz?verbose"
	var last string
	for {
		ok, answer := probeReadyz(ctx, hc, url)
		if ok {
			o.seen(cfg.Host, "ready")
			return nil
		}
		last = answer
		o.seen(cfg.Host, answer)
		if err := sleep(ctx, o.interval); err != nil {
			return fmt.Errorf("API server %s not ready after %s (%v); last answer from /readyz: %s",
				cfg.Host, since(start), err, last)
		}
	}
}

func probeReadyz(ctx context.Context, hc *http.Client, url string) (bool, string) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	return false, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, failingChecks(string(body)))
}

// failingChecks keeps the lines of a verbose /readyz answer that report a
// failure, which are the interesting ones; other bodies are returned as is.
func failingChecks(body string) string {
	var bad []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			bad = append(bad, strings.TrimSpace(l))
		}
	}
	if len(bad) == 0 {
		return strings.TrimSpace(body)
	}
	return strings.Join(bad, "; ")
}

// WaitNodesReady waits until every named node is registered and its Ready
// condition is True. On timeout the error names each node still missing or
// not ready, with the messages of its conditions. Observe reports each
// node's problem as it changes, and "ready" when it is.
func WaitNodesReady(ctx context.Context, cs kubernetes.Interface, names []string, opts ...WaitOption) error {
	o := newWaitOptions(nodesInterval, opts)
	start := time.Now()
	var pending []string
	var lastErr error
	for {
		pending, lastErr = pending[:0], nil
		list, err := listNodes(ctx, cs)
		if err != nil {
			lastErr = err
			pending = append(pending, names...)
			for _, n := range names {
				o.seen(n, err.Error())
			}
		} else {
			byName := map[string]*corev1.Node{}
			for i := range list {
				byName[list[i].Name] = &list[i]
			}
			for _, n := range names {
				problem := nodeProblem(byName[n])
				if problem != "" {
					pending = append(pending, n+": "+problem)
					o.seen(n, problem)
				} else {
					o.seen(n, "ready")
				}
			}
			if len(pending) == 0 {
				return nil
			}
		}
		if err := sleep(ctx, o.interval); err != nil {
			if lastErr != nil {
				return fmt.Errorf("nodes %s not ready after %s (%v); last error listing nodes: %w",
					strings.Join(names, ", "), since(start), err, lastErr)
			}
			return fmt.Errorf("nodes not ready after %s (%v): %s", since(start), err, strings.Join(pending, "; "))
		}
	}
}

func listNodes(ctx context.Context, cs kubernetes.Interface) ([]corev1.Node, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	list, err := cs.CoreV1().Nodes().List(rctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return list.Items, nil
}

// nodeProblem says why a node is not ready, "" when it is.
func nodeProblem(n *corev1.Node) string {
	if n == nil {
		return "not registered (is its kubelet running and able to reach the API server?)"
	}
	var ready *corev1.NodeCondition
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			ready = &n.Status.Conditions[i]
		}
	}
	if ready != nil && ready.Status == corev1.ConditionTrue {
		return ""
	}
	var conds []string
	for _, c := range n.Status.Conditions {
		// Pressure conditions are False when healthy; only list the odd ones.
		if c.Type != corev1.NodeReady && c.Status == corev1.ConditionFalse {
			continue
		}
		s := fmt.Sprintf("%s=%s", c.Type, c.Status)
		if c.Reason != "" || c.Message != "" {
			s += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
		}
		conds = append(conds, s)
	}
	if len(conds) == 0 {
		return "registered, no Ready condition yet"
	}
	sort.Strings(conds)
	return "not ready: " + strings.Join(conds, ", ")
}

// WaitDeploymentAvailable waits until the deployment's current generation
// is rolled out and all its replicas are available (CoreDNS, say). On
// timeout the error gives the deployment's status and each of its pods'
// phase and container states. Observe reports that status as it changes,
// with "namespace/name" as the subject, and "available" at the end.
func WaitDeploymentAvailable(ctx context.Context, cs kubernetes.Interface, ns, name string, opts ...WaitOption) error {
	o := newWaitOptions(deploymentInterval, opts)
	subject := ns + "/" + name
	start := time.Now()
	var last string
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		d, err := cs.AppsV1().Deployments(ns).Get(rctx, name, metav1.GetOptions{})
		cancel()
		switch {
		case apierrors.IsNotFound(err):
			last = "deployment does not exist"
		case err != nil:
			last = err.Error()
		case deploymentAvailable(d):
			o.seen(subject, "available")
			return nil
		default:
			last = deploymentStatus(d) + podsSummary(ctx, cs, ns, d.Spec.Selector)
		}
		o.seen(subject, last)
		if err := sleep(ctx, o.interval); err != nil {
			return fmt.Errorf("deployment %s/%s not available after %s (%v): %s", ns, name, since(start), err, last)
		}
	}
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas >= want &&
		s.AvailableReplicas >= want && s.Replicas == s.UpdatedReplicas
}

func deploymentStatus(d *appsv1.Deployment) string {
	s := d.Status
	out := fmt.Sprintf("replicas %d, updated %d, ready %d, available %d", s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas)
	for _, c := range s.Conditions {
		if c.Status != corev1.ConditionTrue || c.Type == appsv1.DeploymentReplicaFailure {
			out += fmt.Sprintf("; %s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	return out
}

// podsSummary describes the pods a selector picks, for error messages; it
// never fails (an error becomes part of the text).
func podsSummary(ctx context.Context, cs kubernetes.Interface, ns string, sel *metav1.LabelSelector) string {
	if sel == nil {
		return ""
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return ""
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	pods, err := cs.CoreV1().Pods(ns).List(rctx, metav1.ListOptions{LabelSelector: s.String()})
	if err != nil {
		return "; listing its pods: " + err.Error()
	}
	if len(pods.Items) == 0 {
		return "; no pods"
	}
	var parts []string
	for i := range pods.Items {
		parts = append(parts, podState(&pods.Items[i]))
	}
	return "; pods: " + strings.Join(parts, ", ")
}

// podState is one line about a pod: node, phase and why containers wait.
func podState(p *corev1.Pod) string {
	node := p.Spec.NodeName
	if node == "" {
		node = "unscheduled"
	}
	s := fmt.Sprintf("%s on %s %s", p.Name, node, p.Status.Phase)
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue && c.Message != "" {
			s += " (" + c.Message + ")"
		}
	}
	for _, c := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case c.State.Waiting != nil:
			s += fmt.Sprintf(" [%s waiting: %s %s]", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case c.State.Terminated != nil:
			s += fmt.Sprintf(" [%s exited %d: %s]", c.Name, c.State.Terminated.ExitCode, c.State.Terminated.Reason)
		case c.State.Running != nil && !c.Ready:
			s += fmt.Sprintf(" [%s running, not ready]", c.Name)
		}
	}
	return s
}

// sleep waits d or until ctx ends, returning ctx's error then.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
