package verify

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
)

// observed records what a wait reports, safe for any goroutine.
type observed struct {
	mu  sync.Mutex
	got []string
}

func (o *observed) fn(subject, state string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, subject+" = "+state)
}

func (o *observed) check(t *testing.T, want ...string) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if strings.Join(o.got, "\n") != strings.Join(want, "\n") {
		t.Errorf("observed:\n%s\nwant:\n%s", strings.Join(o.got, "\n"), strings.Join(want, "\n"))
	}
}

// script answers the n-th call with step n (the last one repeats).
type script[T any] struct {
	mu    sync.Mutex
	n     int
	steps []T
}

func (s *script[T]) next() T {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.steps[min(s.n, len(s.steps)-1)]
	s.n++
	return st
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestWaitAPIReadyObserves(t *testing.T) {
	type answer struct {
		code int
		body string
		err  error
	}
	sc := &script[answer]{steps: []answer{
		{err: errors.New("connection refused")},
		{code: 503, body: "[+]ping ok\n[-]etcd failed: reason withheld\n"},
		{code: 503, body: "[+]ping ok\n[-]etcd failed: reason withheld\n"}, // same: not reported again
		{code: 500, body: "[+]etcd ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n"},
		{code: 200, body: "ok"},
	}}
	cfg := &rest.Config{Host: "https://k1.test:6443", Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path != "/readyz" {
			t.Errorf("asked %s", r.URL)
		}
		a := sc.next()
		if a.err != nil {
			return nil, a.err
		}
		return &http.Response{StatusCode: a.code, Body: io.NopCloser(strings.NewReader(a.body)), Request: r}, nil
	})}
	var obs observed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitAPIReady(ctx, cfg, Observe(obs.fn), withInterval(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	obs.check(t,
		`https://k1.test:6443 = Get "https://k1.test:6443/readyz?verbose": connection refused`,
		"https://k1.test:6443 = HTTP 503: [-]etcd failed: reason withheld",
		"https://k1.test:6443 = HTTP 500: [-]poststarthook/rbac/bootstrap-roles failed: reason withheld",
		"https://k1.test:6443 = ready")

	// Without an observer the wait works as before, and its error still
	// carries the last answer.
	sc = &script[answer]{steps: []answer{{code: 503, body: "[-]etcd failed: reason withheld\n"}}}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	err := WaitAPIReady(short, cfg, withInterval(time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "[-]etcd failed") {
		t.Errorf("error %v", err)
	}
}

func node(name string, ready corev1.ConditionStatus, reason string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if ready != "" {
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, Reason: reason, Message: "msg"}}
	}
	return n
}

func TestWaitNodesReadyObserves(t *testing.T) {
	type answer struct {
		nodes []corev1.Node
		err   error
	}
	sc := &script[answer]{steps: []answer{
		{err: errors.New("connection refused")},
		{nodes: []corev1.Node{node("w1", corev1.ConditionFalse, "KubeletNotReady")}},
		{nodes: []corev1.Node{node("w1", corev1.ConditionFalse, "KubeletNotReady")}},
		{nodes: []corev1.Node{node("w1", corev1.ConditionTrue, ""), node("w2", "", "")}},
		{nodes: []corev1.Node{node("w1", corev1.ConditionTrue, ""), node("w2", corev1.ConditionTrue, "")}},
	}}
	cs := fake.NewClientset()
	cs.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		a := sc.next()
		return true, &corev1.NodeList{Items: a.nodes}, a.err
	})
	var obs observed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitNodesReady(ctx, cs, []string{"w1", "w2"}, Observe(obs.fn), withInterval(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	obs.check(t,
		"w1 = list nodes: connection refused",
		"w2 = list nodes: connection refused",
		"w1 = not ready: Ready=False (KubeletNotReady: msg)",
		"w2 = not registered (is its kubelet running and able to reach the API server?)",
		"w1 = ready",
		"w2 = registered, no Ready condition yet",
		"w2 = ready")
}

func TestWaitDeploymentAvailableObserves(t *testing.T) {
	one := int32(1)
	dep := func(available int32) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns", Generation: 1},
			Spec: appsv1.DeploymentSpec{Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}}},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: available},
		}
	}
	sc := &script[*appsv1.Deployment]{steps: []*appsv1.Deployment{nil, dep(0), dep(0), dep(1)}}
	cs := fake.NewClientset()
	cs.PrependReactor("get", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
		d := sc.next()
		if d == nil {
			return true, nil, apierrors.NewNotFound(appsv1.Resource("deployments"), "coredns")
		}
		return true, d, nil
	})
	var obs observed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitDeploymentAvailable(ctx, cs, "kube-system", "coredns", Observe(obs.fn), withInterval(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	obs.check(t,
		"kube-system/coredns = deployment does not exist",
		"kube-system/coredns = replicas 1, updated 1, ready 0, available 0; no pods",
		"kube-system/coredns = available")
}
