package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/hostnet"
	"github.com/kubelab/kubelab/internal/image"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// StopPhases shut every selected node down gracefully; disks, network and
// PKI stay, so `start` brings the cluster back with its data. With suspend,
// each node's memory and device state is saved beside its disk instead (the
// driver must be a Suspender), and `start` resumes it in seconds.
func (e *Env) StopPhases(suspend bool) ([]Phase, error) {
	cls := e.clusters()
	if suspend {
		s, ok := e.Driver.(driver.Suspender)
		if !ok {
			return nil, fmt.Errorf("the %s driver cannot suspend machines", e.Driver.Name())
		}
		return []Phase{{
			Name:     "suspend",
			Describe: func() string { return "save every node's memory and device state beside its disk and stop it" },
			Run:      func(ctx context.Context) error { return e.eachNode(ctx, cls, s.Suspend) },
		}}, nil
	}
	return []Phase{{
		Name:     "stop",
		Describe: func() string { return "power every node off (ACPI, then kill after the driver's timeout)" },
		Run:      func(ctx context.Context) error { return e.eachNode(ctx, cls, e.Driver.Stop) },
	}}, nil
}

// DestroyPhases remove what `up` made for the selected clusters: VMs and
// disks, kubeconfig contexts, and the host network when no cluster is left
// using it (otherwise it is re-applied without the destroyed nodes). With
// purge the clusters' directories (PKI included) go too.
func (e *Env) DestroyPhases(purge bool) []Phase {
	cls := e.clusters()
	remaining := e.remainingPlan()
	return []Phase{
		{Name: "vms", Describe: func() string { return "stop and delete every node's VM and disk" },
			Run: func(ctx context.Context) error { return e.eachNode(ctx, cls, e.Driver.Delete) }},
		{Name: "serve", Describe: func() string { return "stop the lab's config server if it runs" },
			Run: func(ctx context.Context) error {
				if len(remaining.Clusters) > 0 {
					return nil // the other clusters' nodes may still fetch
				}
				_, err := StopServe(e.Layout)
				return err
			}},
		{Name: "network", Describe: func() string {
			if len(remaining.Clusters) == 0 {
				return "remove the bridge, taps, rules and the namespace kubelab created"
			}
			return "remove the destroyed nodes' taps and forwards, keep the rest"
		}, Run: func(ctx context.Context) error {
			if len(remaining.Clusters) == 0 {
				return hostnet.Remove(ctx, hostnet.FromPlan(e.Plan, e.Layout.HostNet()))
			}
			_, err := hostnet.Apply(ctx, hostnet.FromPlan(remaining, e.Layout.HostNet()))
			return err
		}},
		{Name: "kubeconfig", Describe: func() string { return "remove the clusters' contexts from the user's kubeconfig" },
			Run: func(ctx context.Context) error { return e.removeKubeconfigs(cls) }},
		{Name: "files", Describe: func() string {
			if purge {
				return "remove the clusters' directories, PKI included"
			}
			return "remove node directories, snapshots and kubeconfigs; keep the PKI (use --purge to remove it)"
		}, Run: func(ctx context.Context) error { return e.removeFiles(cls, purge) }},
	}
}

// remainingPlan is the plan without the clusters being destroyed.
func (e *Env) remainingPlan() *plan.Plan {
	rest := *e.Plan
	rest.Clusters, rest.Forwards = nil, nil
	if len(e.Clusters) == 0 {
		return &rest // destroying everything
	}
	keep := map[string]bool{}
	for _, c := range e.Plan.Clusters {
		if !selected(e.Clusters, c.Name) {
			rest.Clusters = append(rest.Clusters, c)
			keep[c.Name] = true
		}
	}
	for _, f := range e.Plan.Forwards {
		if keep[f.Cluster] || (f.Cluster == "" && len(rest.Clusters) > 0) {
			rest.Forwards = append(rest.Forwards, f)
		}
	}
	return &rest
}

func (e *Env) removeKubeconfigs(cls []plan.Cluster) error {
	user, err := UserKubeconfig()
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cls {
		if err := RemoveContext(user, pki.ContextName(e.Lab.Name, c.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Env) removeFiles(cls []plan.Cluster, purge bool) error {
	for _, c := range cls {
		if purge {
			if err := os.RemoveAll(e.Layout.Cluster(c.Name)); err != nil {
				return err
			}
			continue
		}
		// Node directories hold disks, consoles and rendered configs; the
		// host keys go with them (a re-created node gets new ones).
		// Snapshots are of VMs that no longer exist: they go too.
		for _, dir := range []string{filepath.Join(e.Layout.Cluster(c.Name), "nodes"), e.Layout.Snapshots(c.Name)} {
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
		}
		if err := os.RemoveAll(e.Layout.Kubeconfig(c.Name)); err != nil {
			return err
		}
	}
	return nil
}

// RefreshPhases re-provision one node, the Xen guide's "refresh": its
// configuration is rendered again and it boots through first-boot
// provisioning again, keeping its identity (name, address, keys,
// certificates). A running node provisioned by Ignition on kubelab's image
// keeps its disk, as in the guide: the first-boot flag is set,
// /etc/machine-id removed, and the node power-cycled, so Ignition applies
// the current config over it. Any other node gets a fresh disk from its
// image.
func (e *Env) RefreshPhases(ctx context.Context, nodeName string) ([]Phase, error) {
	c, n, ok := e.Plan.Node(nodeName)
	if !ok {
		return nil, fmt.Errorf("no node %q in lab.yaml", nodeName)
	}
	rp, ok := e.Driver.(driver.Reprovisioner)
	if !ok {
		return nil, fmt.Errorf("the %s driver cannot re-provision a node", e.Driver.Name())
	}
	m, err := e.Machine(c, n)
	if err != nil {
		return nil, err
	}
	e.Clusters = []string{c.Name}
	one := []plan.Cluster{{Name: c.Name, Nodes: []plan.Node{n}}}
	// Asked when used: the KVM probe boots the image's kernel, which the
	// image phase may only now have put in place.
	t := func() Timeouts { return e.timeouts(ctx) }
	render := Phase{Name: "render", Describe: func() string { return "render the cluster's configuration again (keys are reused)" },
		Run: func(ctx context.Context) error { return e.render() }}
	stop := Phase{Name: "stop", Describe: func() string { return "power the node off" },
		Run: func(ctx context.Context) error { return e.Driver.Stop(ctx, m) }}
	boot := Phase{Name: "boot", Describe: func() string { return "boot it and wait for its readiness marker" },
		Run: func(ctx context.Context) error { return e.boot(ctx, one, t().Boot) }}
	phases := []Phase{render, stop,
		{Name: "reprovision", Describe: func() string { return "replace its disk with a fresh overlay on " + m.BaseImage },
			Run: func(ctx context.Context) error {
				if err := rp.Reprovision(ctx, m); err != nil {
					return err
				}
				return e.Driver.Create(ctx, m)
			}},
		boot,
	}
	if e.ignitionInPlace(ctx, m, n) {
		phases = []Phase{render,
			{Name: "firstboot", Describe: func() string {
				return "set the first-boot flag " + image.IgnitionFirstBootFlag + " and remove /etc/machine-id on the node (its disk stays)"
			},
				Run: func(ctx context.Context) error {
					_, err := e.sshOutput(ctx, n, "touch "+image.IgnitionFirstBootFlag+" && rm -f /etc/machine-id && sync")
					return err
				}},
			stop,
			{Name: "serve", Describe: func() string {
				if !e.Plan.Network.ConfigServer {
					return "no config server: the hypervisor hands the new config over fw_cfg"
				}
				return "start the config server again, serving the new config"
			},
				Run: e.startServe},
			boot,
		}
	}
	if n.HasRole(spec.RoleEtcd) {
		phases = append(phases, Phase{Name: "etcd", Describe: func() string { return "wait for its etcd member to be healthy" },
			Run: func(ctx context.Context) error { return e.waitEtcd(ctx, one, t().Etcd) }})
	}
	if n.HasRole(spec.RoleControlPlane) {
		phases = append(phases, Phase{Name: "apiserver", Describe: func() string { return "wait for the API server" },
			Run: func(ctx context.Context) error { return e.waitAPI(ctx, []plan.Cluster{c}, t().APIServer) }})
	}
	if n.HasRole(spec.RoleWorker) {
		phases = append(phases, Phase{Name: "node", Describe: func() string { return "wait until it is Ready again" },
			Run: func(ctx context.Context) error { return e.waitNodes(ctx, one, t().Nodes) }})
	}
	return phases, nil
}

// ignitionInPlace tells whether refresh keeps the node's disk: a running
// node provisioned by Ignition on kubelab's image (whose initramfs runs
// Ignition again when it finds the first-boot flag).
func (e *Env) ignitionInPlace(ctx context.Context, m driver.Machine, n plan.Node) bool {
	if n.Provisioning != spec.ProvisionIgnition || !strings.Contains(m.Cmdline, "ignition.platform.id=") {
		return false
	}
	st, err := e.Driver.State(ctx, m)
	return err == nil && st == driver.StateRunning
}

// NodeStatus is one row of `kubelab status`.
type NodeStatus struct {
	Cluster string   `json:"cluster"`
	Node    string   `json:"node"`
	Roles   []string `json:"roles"`
	State   string   `json:"state"`
	Address string   `json:"address"`
	SSH     int      `json:"sshHostPort"`
	Ready   string   `json:"ready"` // Kubernetes node Ready condition, "-" when not a worker or unknown
}

// Status reports every selected node's VM state and, for workers, its
// Kubernetes readiness (asked with a short timeout).
func (e *Env) Status(ctx context.Context) ([]NodeStatus, error) {
	var out []NodeStatus
	for _, c := range e.clusters() {
		ready := map[string]string{}
		if cs, err := e.clientset(c); err == nil {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ready = nodeReadiness(qctx, cs)
			cancel()
		}
		for _, n := range c.Nodes {
			m, err := e.Machine(c, n)
			if err != nil {
				return nil, err
			}
			st, err := e.Driver.State(ctx, m)
			if err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
			r := "-"
			if v, ok := ready[n.Name]; ok {
				r = v
			}
			out = append(out, NodeStatus{Cluster: c.Name, Node: n.Name, Roles: n.Roles, State: string(st),
				Address: n.Address.String(), SSH: n.SSHHostPort, Ready: r})
		}
	}
	return out, nil
}

// nodeReadiness maps node names to their Ready condition status.
func nodeReadiness(ctx context.Context, cs kubernetes.Interface) map[string]string {
	out := map[string]string{}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, n := range nodes.Items {
		out[n.Name] = "Unknown"
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				out[n.Name] = string(cond.Status)
			}
		}
	}
	return out
}
