package verify

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/versions"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() && !ci() {
		t.Skip("starts a real etcd and kube-apiserver; skipped under -short")
	}
}

// TestControlPlaneFromRenderedUnits starts etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler with the flags of the units
// nodeconfig renders, then exercises readiness, add-ons, RBAC and node
// waits against them.
func TestControlPlaneFromRenderedUnits(t *testing.T) {
	skipShort(t)
	env := startControlPlane(t, "kube-controller-manager", "kube-scheduler")
	env.dumpLogsOnFailure()
	took := env.waitReady(3 * time.Minute)
	t.Logf("etcd + kube-apiserver start to /readyz OK: %s", took.Round(10*time.Millisecond))

	admin := env.clientset(pki.Admin)
	ctx := context.Background()

	t.Run("WaitAPIReady names the failure", func(t *testing.T) {
		cfg := env.config(pki.Admin)
		cfg.Host = fmt.Sprintf("https://127.0.0.1:%d", freePort(t)) // nothing listens
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := WaitAPIReady(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), cfg.Host) {
			t.Fatalf("want an error naming the host and the refused connection, got %v", err)
		}
	})

	t.Run("admin is forbidden before the RBAC add-on", func(t *testing.T) {
		_, err := admin.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("list secrets as admin before RBAC: want Forbidden, got %v", err)
		}
	})

	addons, err := nodeconfig.Addons(env.Plan, env.Cluster, versions.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("admin cannot apply the add-ons itself", func(t *testing.T) {
		_, err := Apply(ctx, env.config(pki.Admin), addons[:1])
		if err == nil || !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "rbac.yaml") {
			t.Fatalf("want a forbidden error naming rbac.yaml, got %v", err)
		}
	})

	superCfg := env.config(pki.SuperAdmin)
	var applied []Object
	t.Run("super-admin applies the add-ons", func(t *testing.T) {
		start := time.Now()
		applied, err = Apply(ctx, superCfg, addons)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("applied %d objects in %s", len(applied), time.Since(start).Round(time.Millisecond))
		want := 0
		for _, m := range addons {
			objs, err := decodeManifest(m)
			if err != nil {
				t.Fatal(err)
			}
			want += len(objs)
		}
		if len(applied) != want || want < 5 {
			t.Fatalf("applied %d objects, the manifests hold %d", len(applied), want)
		}
	})

	t.Run("admin is cluster-admin after the RBAC add-on", func(t *testing.T) {
		// The authorizer learns of new bindings through an informer.
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, err := admin.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("list secrets as admin after RBAC: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("Apply is idempotent", func(t *testing.T) {
		dyn, err := dynamic.NewForConfig(superCfg)
		if err != nil {
			t.Fatal(err)
		}
		before := resourceVersions(t, dyn, applied)
		again, err := Apply(ctx, superCfg, addons)
		if err != nil {
			t.Fatal(err)
		}
		if len(again) != len(applied) {
			t.Fatalf("second apply: %d objects, first %d", len(again), len(applied))
		}
		after := resourceVersions(t, dyn, applied)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s changed on re-apply: resourceVersion %s -> %s", k, v, after[k])
			}
		}
	})

	t.Run("WaitNodesReady", func(t *testing.T) {
		node := env.Node.Name
		short := func() error {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			return WaitNodesReady(ctx, admin, []string{node})
		}
		err := short()
		if err == nil || !strings.Contains(err.Error(), node+": not registered") {
			t.Fatalf("want an error saying %s is not registered, got %v", node, err)
		}
		n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The controller manager's node controllers change a new Node too
		// (taints): each status write reads the latest version, retrying on
		// a conflict.
		setReady := func(status corev1.ConditionStatus, reason, message string) {
			t.Helper()
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cur, err := admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				cur.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status,
					Reason: reason, Message: message, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
				_, err = admin.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		setReady(corev1.ConditionFalse, "KubeletNotReady", "container runtime network not ready")
		err = short()
		if err == nil || !strings.Contains(err.Error(), "container runtime network not ready") {
			t.Fatalf("want the Ready condition's message in the error, got %v", err)
		}
		setReady(corev1.ConditionTrue, "KubeletReady", "ok")
		if err := short(); err != nil {
			t.Fatalf("node is Ready now: %v", err)
		}
	})

	t.Run("WaitDeploymentAvailable reports pods that cannot run", func(t *testing.T) {
		// The fake node has no kubelet: CoreDNS is scheduled but never runs.
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		err := WaitDeploymentAvailable(ctx, admin, "kube-system", "coredns")
		if err == nil || !strings.Contains(err.Error(), "kube-system/coredns not available") {
			t.Fatalf("want a not-available error, got %v", err)
		}
		t.Logf("error as reported: %v", err)
	})

	t.Run("Check reports a pod that never starts", func(t *testing.T) {
		// Without kubelet heartbeats the node lifecycle controller may have
		// marked the node unknown by now; report it ready again.
		n, err := admin.CoreV1().Nodes().Get(ctx, env.Node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		var progress strings.Builder
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		rep, err := Check(ctx, env.config(pki.Admin), CheckOptions{Nodes: []string{env.Node.Name}, Timeout: 8 * time.Second, Progress: &progress})
		t.Logf("report:\n%s", rep)
		if err == nil {
			t.Fatal("Check passed on a cluster without kubelets")
		}
		failed := rep.Failed()
		if len(failed) != 1 || !strings.HasPrefix(failed[0].Name, "server pods on "+env.Node.Name) ||
			!strings.Contains(failed[0].Detail, "server-a") || !strings.Contains(failed[0].Detail, "state:") {
			t.Fatalf("want exactly the server step failed with the pod's state, got %+v", failed)
		}
		if !strings.Contains(progress.String(), "cleanup: namespace "+DefaultCheckNamespace+" deleted") {
			t.Errorf("namespace not cleaned up; progress:\n%s", progress.String())
		}
	})
}

func ci() bool { return os.Getenv("CI") == "true" }

// resourceVersions reads the current resourceVersion of each object.
func resourceVersions(t *testing.T, dyn dynamic.Interface, objs []Object) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range objs {
		gvr := resourceOf(t, o.Kind)
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if o.Namespace != "" {
			ri = dyn.Resource(gvr).Namespace(o.Namespace)
		}
		u, err := ri.Get(context.Background(), o.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s: %v", o, err)
		}
		out[o.String()] = u.GetResourceVersion()
	}
	return out
}

func resourceOf(t *testing.T, kind string) schema.GroupVersionResource {
	t.Helper()
	m := map[string]schema.GroupVersionResource{
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
		"ConfigMap":          {Version: "v1", Resource: "configmaps"},
		"Service":            {Version: "v1", Resource: "services"},
		"Deployment":         {Group: "apps", Version: "v1", Resource: "deployments"},
	}
	gvr, ok := m[kind]
	if !ok {
		t.Fatalf("test does not know the resource of kind %s", kind)
	}
	return gvr
}
