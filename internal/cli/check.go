package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/verify"
)

func newCheckCmd(g *globalOptions) *cobra.Command {
	var (
		server   string
		timeout  time.Duration
		nodePort int
		keep     bool
	)
	cmd := &cobra.Command{
		Use:   "check [CLUSTER]",
		Short: "Smoke-check a running cluster: pod network across nodes, services, DNS, NodePort",
		Long: `check runs pods in a throwaway namespace (kubelab-check) with the admin
kubeconfig and reports one line per sub-check:

  pod to pod across two workers over the pod network,
  a ClusterIP service by address and by name (kube-proxy),
  cluster DNS (kubernetes.default and the service),
  a NodePort service from a pod and from this host.

From the host the NodePort is fetched on the node the plan forwards the
cluster's NodePort range to, directly over the lab network: that is where
the host's DNAT forward leads, and the forward itself does not apply to
127.0.0.1. Without CLUSTER every cluster of the lab is checked.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			labDir, err := g.labDir()
			if err != nil {
				return err
			}
			clusters, err := selectClusters(p, args)
			if err != nil {
				return err
			}
			var failed []string
			for _, c := range clusters {
				if err := runCheck(cmd.Context(), cmd.OutOrStdout(), labDir, p, c, server, timeout, nodePort, keep); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s: %v\n", c.Name, err)
					failed = append(failed, c.Name)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("check failed for cluster %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "API server URL instead of the admin kubeconfig's (e.g. https://<control plane>:6443)")
	cmd.Flags().DurationVar(&timeout, "timeout", verify.DefaultCheckTimeout, "time limit of each sub-check")
	cmd.Flags().IntVar(&nodePort, "nodeport", 0, "NodePort to use (default: the start of the cluster's NodePort range + 80)")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the kubelab-check namespace in place for debugging")
	return cmd
}

func selectClusters(p *plan.Plan, args []string) ([]plan.Cluster, error) {
	if len(args) == 0 {
		return p.Clusters, nil
	}
	if c, ok := p.Cluster(args[0]); ok {
		return []plan.Cluster{c}, nil
	}
	var names []string
	for _, c := range p.Clusters {
		names = append(names, c.Name)
	}
	return nil, fmt.Errorf("no cluster %q in the lab; clusters are %s", args[0], strings.Join(names, ", "))
}

func runCheck(ctx context.Context, out io.Writer, labDir string, p *plan.Plan, c plan.Cluster, server string, timeout time.Duration, nodePort int, keep bool) error {
	start := time.Now()
	path := pki.KubeconfigPath(pki.Dir(labDir, c.Name), pki.Admin)
	cfg, err := clientcmd.BuildConfigFromFlags(server, path)
	if err != nil {
		return fmt.Errorf("admin kubeconfig %s: %w (run kubelab up first)", path, err)
	}
	fmt.Fprintf(out, "check cluster %s (API server %s)\n", c.Name, cfg.Host)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = verify.WaitAPIReady(wctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	opts := verify.OptionsFor(c)
	opts.Timeout, opts.Progress, opts.Keep = timeout, out, keep
	if nodePort != 0 {
		if nodePort < c.NodePortFrom || nodePort > c.NodePortTo {
			return fmt.Errorf("--nodeport %d is outside cluster %s's NodePort range %d-%d", nodePort, c.Name, c.NodePortFrom, c.NodePortTo)
		}
		opts.NodePort = nodePort
	}
	if target, ok := nodePortTarget(p, c); ok {
		opts.NodePortProbe = func(ctx context.Context, port int) (string, error) {
			return httpGet(ctx, "http://"+net.JoinHostPort(target, strconv.Itoa(port))+"/")
		}
	}
	if _, err := verify.Check(ctx, cfg, opts); err != nil {
		return err
	}
	fmt.Fprintf(out, "cluster %s passed (%s)\n", c.Name, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// nodePortTarget is the node address the host's NodePort forward leads to,
// else the first worker's.
func nodePortTarget(p *plan.Plan, c plan.Cluster) (string, bool) {
	for _, f := range p.Forwards {
		if f.Purpose == "nodeports" && f.Cluster == c.Name && f.Target.IsValid() {
			return f.Target.String(), true
		}
	}
	for _, n := range c.Nodes {
		if n.HasRole("worker") {
			return n.Address.String(), true
		}
	}
	return "", false
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}
