package lab

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
)

// The stages of a CA rotation, in order; pki's phases are 1..3.
var caStages = []string{"", pki.RotationTrustBoth, pki.RotationReissue, pki.RotationTrustNew}

func caStage(r *pki.Rotation) int {
	if r == nil {
		return 0
	}
	for i, s := range caStages {
		if s == r.Phase {
			return i
		}
	}
	return 0
}

// RotateCAPhases rotates one of the cluster's CAs on the running cluster
// with an overlap: every trust point first trusts both CAs, then every
// certificate the CA signed is re-issued under the new one (same keys),
// then the old CA is dropped. After each step the nodes get what changed
// and restart what reads it, one node at a time, and the admin kubeconfig
// is written again, so kubectl works throughout. Service-account tokens
// are signed by their own key and are not touched. An interrupted
// rotation continues when the command is run again; another CA's
// rotation waits until it is finished.
func (e *Env) RotateCAPhases(ctx context.Context, cluster, alias string) ([]Phase, error) {
	c, err := e.cluster(cluster)
	if err != nil {
		return nil, err
	}
	ca, err := pki.CAByAlias(alias)
	if err != nil {
		return nil, err
	}
	e.Clusters = []string{c.Name}
	dir := pki.Dir(e.Layout.Dir, c.Name)
	r, err := pki.ReadRotation(dir)
	if err != nil {
		return nil, err
	}
	if r != nil && r.CA != ca {
		return nil, fmt.Errorf("a rotation of the %s CA is half done (phase %s); run kubelab certs rotate-ca %s --ca %s to finish it first",
			pki.AliasOf(r.CA), r.Phase, c.Name, pki.AliasOf(r.CA))
	}
	if r != nil {
		fmt.Fprintf(e.out(), "    resuming the rotation of the %s CA (started %s) at phase %s\n", alias, r.Started.Format(time.RFC3339), r.Phase)
	}
	opts, err := pkiOptions(e.Lab, c)
	if err != nil {
		return nil, err
	}
	// step returns the phase that brings the rotation to stage and the
	// nodes to its configuration; a stage already passed is skipped.
	step := func(stage int, what string, after func(context.Context) error) Phase {
		return Phase{Name: caStages[stage], Describe: func() string { return what },
			Run: func(ctx context.Context) error {
				r, err := pki.ReadRotation(dir)
				if err != nil {
					return err
				}
				if caStage(r) > stage {
					fmt.Fprintf(e.out(), "    %s: done before\n", caStages[stage])
					return nil
				}
				configs, err := e.rerender(c, func(*RenderInput) error {
					switch {
					case caStage(r) == stage:
						return nil // delivering again after an interruption
					case stage == 1:
						return pki.StartRotation(dir, ca, opts)
					default:
						_, err := pki.AdvanceRotation(dir)
						return err
					}
				})
				if err != nil {
					return err
				}
				if err := e.deliverAll(ctx, c, configs); err != nil {
					return fmt.Errorf("%w\nrun the command again to continue the rotation from here", err)
				}
				if err := e.writeKubeconfigs([]plan.Cluster{c}); err != nil {
					return err
				}
				if after != nil {
					return after(ctx)
				}
				return nil
			}}
	}
	var afterTrust func(context.Context) error
	if ca == pki.KubernetesCA {
		// Pods read the cluster's CA (kube-root-ca.crt) when they start:
		// they must trust the new CA before the API server presents it.
		afterTrust = func(ctx context.Context) error { return e.restartWorkloads(ctx, c) }
	}
	return []Phase{
		{Name: "check", Describe: func() string { return "check that every node of " + c.Name + " runs and answers ssh" },
			Run: func(ctx context.Context) error { return e.requireRunning(ctx, c) }},
		step(1, "make a new "+alias+" CA; every component trusts the old and the new", afterTrust),
		step(2, "re-issue every certificate the "+alias+" CA signed under the new CA, with the same keys", nil),
		step(3, "drop the old "+alias+" CA from every trust point", nil),
		{Name: "finish", Describe: func() string { return "make the new CA the cluster's " + alias + " CA in the lab directory" },
			Run: func(ctx context.Context) error { return pki.FinishRotation(dir) }},
		{Name: "verify", Describe: func() string {
			return "check that every endpoint serves a certificate of the new CA, and the nodes are Ready"
		},
			Run: func(ctx context.Context) error { return e.verifyServing(ctx, c) }},
	}, nil
}

// restartWorkloads waits until the controller manager has published the
// cluster's trust bundle to pods, then restarts every Deployment,
// DaemonSet and StatefulSet (as kubectl rollout restart does) and waits
// for them to be available again.
func (e *Env) restartWorkloads(ctx context.Context, c plan.Cluster) error {
	ctx, cancel := context.WithTimeout(ctx, restartTimeout)
	defer cancel()
	cs, err := e.clientset(c)
	if err != nil {
		return err
	}
	creds, err := e.readCreds(c)
	if err != nil {
		return err
	}
	trust, err := creds.CACert(pki.KubernetesCA)
	if err != nil {
		return err
	}
	e.Progress.Status(c.Name, "waiting for kube-root-ca.crt to carry both CAs")
	if err := poll(ctx, 3*time.Second, func(ctx context.Context) error {
		cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data["ca.crt"] != string(trust) {
			return fmt.Errorf("kube-root-ca.crt not updated yet")
		}
		return nil
	}); err != nil {
		return err
	}
	patch := []byte(fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubelab.dev/restartedAt":%q}}}}}`, time.Now().UTC().Format(time.RFC3339)))
	apps := cs.AppsV1()
	deps, err := apps.Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	dss, err := apps.DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	sts, err := apps.StatefulSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, d := range deps.Items {
		if _, err := apps.Deployments(d.Namespace).Patch(ctx, d.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("restart deployment %s/%s: %w", d.Namespace, d.Name, err)
		}
	}
	for _, d := range dss.Items {
		if _, err := apps.DaemonSets(d.Namespace).Patch(ctx, d.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("restart daemonset %s/%s: %w", d.Namespace, d.Name, err)
		}
	}
	for _, d := range sts.Items {
		if _, err := apps.StatefulSets(d.Namespace).Patch(ctx, d.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("restart statefulset %s/%s: %w", d.Namespace, d.Name, err)
		}
	}
	n := len(deps.Items) + len(dss.Items) + len(sts.Items)
	return poll(ctx, 5*time.Second, func(ctx context.Context) error {
		var waiting []string
		deps, err := apps.Deployments("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, d := range deps.Items {
			if !deploymentRolledOut(d) {
				waiting = append(waiting, "deployment "+d.Namespace+"/"+d.Name)
			}
		}
		dss, err := apps.DaemonSets("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, d := range dss.Items {
			s := d.Status
			if s.ObservedGeneration < d.Generation || s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberAvailable != s.DesiredNumberScheduled {
				waiting = append(waiting, "daemonset "+d.Namespace+"/"+d.Name)
			}
		}
		sts, err := apps.StatefulSets("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, d := range sts.Items {
			s := d.Status
			if s.ObservedGeneration < d.Generation || s.UpdateRevision != s.CurrentRevision || s.AvailableReplicas != s.Replicas {
				waiting = append(waiting, "statefulset "+d.Namespace+"/"+d.Name)
			}
		}
		if len(waiting) > 0 {
			e.Progress.Status(c.Name, fmt.Sprintf("restarted %d workloads; waiting for %v", n, waiting))
			return fmt.Errorf("not rolled out: %v", waiting)
		}
		e.Progress.Final(c.Name, fmt.Sprintf("restarted %d workloads", n))
		return nil
	})
}

func deploymentRolledOut(d appsv1.Deployment) bool {
	s := d.Status
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
}
