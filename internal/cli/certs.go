package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/hypervisor"
	"github.com/kubelab/kubelab/internal/lab"
	"github.com/kubelab/kubelab/internal/pki"
)

func newCertsCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "certs [CLUSTER]",
		Short: "List every cluster certificate with its subject, issuer and expiry (reads only)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: use text or json", output)
			}
			_, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			labDir, err := g.labDir()
			if err != nil {
				return err
			}
			var clusters []string
			for _, c := range p.Clusters {
				if len(args) == 0 || args[0] == c.Name {
					clusters = append(clusters, c.Name)
				}
			}
			if len(clusters) == 0 {
				var names []string
				for _, c := range p.Clusters {
					names = append(names, c.Name)
				}
				return fmt.Errorf("no cluster %q in the lab; clusters are %s", args[0], strings.Join(names, ", "))
			}
			var all []pki.CertInfo
			var missing []string
			for _, c := range clusters {
				infos, err := pki.List(labDir, c)
				if errors.Is(err, fs.ErrNotExist) {
					missing = append(missing, c)
					continue
				}
				if err != nil {
					return err
				}
				all = append(all, infos...)
			}
			for _, c := range missing {
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s has no certificates yet (%s does not exist); run kubelab render\n",
					c, pki.Dir(labDir, c))
			}
			if output == "json" {
				if all == nil {
					all = []pki.CertInfo{}
				}
				out, err := json.MarshalIndent(all, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", out)
				return err
			}
			if len(all) == 0 {
				return nil
			}
			return writeCertTable(cmd, all, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.AddCommand(newCertsRenewCmd(g), newRotateCACmd(g), newRotateEncryptionKeyCmd(g))
	return cmd
}

// splitClusterArg reads [CLUSTER] [NAME...]: the first argument is the
// cluster when it names one; a lab with one cluster needs no cluster.
func splitClusterArg(env *lab.Env, args []string) (string, []string, error) {
	if len(args) > 0 {
		if _, ok := env.Plan.Cluster(args[0]); ok {
			return args[0], args[1:], nil
		}
	}
	if len(env.Plan.Clusters) == 1 {
		return env.Plan.Clusters[0].Name, args, nil
	}
	var names []string
	for _, c := range env.Plan.Clusters {
		names = append(names, c.Name)
	}
	return "", nil, fmt.Errorf("the lab has %d clusters; name one first (%s)", len(names), strings.Join(names, ", "))
}

// runningClusterEnv is the common start of commands that change a running
// cluster: progress flags checked, the lab loaded, [CLUSTER] read from the
// arguments (the rest returned), the hypervisor's tools present.
func runningClusterEnv(g *globalOptions, cmd *cobra.Command, pf *progressFlags, args []string) (*lab.Env, string, []string, error) {
	if err := pf.check(); err != nil {
		return nil, "", nil, err
	}
	env, err := loadEnv(g, cmd, nil)
	if err != nil {
		return nil, "", nil, err
	}
	cluster, rest, err := splitClusterArg(env, args)
	if err != nil {
		return nil, "", nil, err
	}
	if err := hypervisor.Check(env.Lab); err != nil {
		return nil, "", nil, err
	}
	return env, cluster, rest, nil
}

func newCertsRenewCmd(g *globalOptions) *cobra.Command {
	var all, newKeys, dryRun bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "renew [CLUSTER] [--all | NAME...]",
		Short: "Re-issue leaf certificates and put them on the running nodes",
		Long: `Re-issue leaf certificates (names as kubelab certs lists them) with a new
lifetime from lab.yaml's certificates.leafValidity, copy them to the running
nodes and restart only the components that use them: etcd members first, then
control planes, then workers, one node at a time, each healthy again before
the next. Then every TLS endpoint is checked to serve the certificate on disk.

Certificates keep their private keys unless --new-keys is given.
Every node of the cluster must be running; nothing is changed otherwise.
CAs are not renewed here.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			env, cluster, names, err := runningClusterEnv(g, cmd, &pf, args)
			if err != nil {
				return err
			}
			req := lab.RenewRequest{Cluster: cluster, Names: names, All: all, NewKeys: newKeys}
			return runPhasesWith(cmd, env, &pf, "certs-renew", dryRun, func(ctx context.Context) ([]lab.Phase, error) {
				return env.RenewPhases(ctx, req)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "renew every leaf certificate of the cluster")
	cmd.Flags().BoolVar(&newKeys, "new-keys", false, "give the renewed certificates new private keys (default: keep the keys)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	pf.add(cmd)
	return cmd
}

func newRotateCACmd(g *globalOptions) *cobra.Command {
	var ca string
	var dryRun bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "rotate-ca [CLUSTER] --ca kubernetes|etcd|front-proxy|apps",
		Short: "Replace one of the cluster's CAs on the running cluster, with an overlap",
		Long: `Replace a CA without a moment in which a component distrusts a peer:
  1. trust-both  a new CA is made; every component trusts the old and the new
                 (for the kubernetes CA, every Deployment, DaemonSet and
                 StatefulSet is then restarted, so pods trust both too)
  2. reissue     every certificate the CA signed is re-issued under the new
                 CA, with the same keys
  3. trust-new   the old CA is dropped everywhere
  4. finish      the new CA becomes the cluster's CA in the lab directory
Each step copies what changed to the nodes and restarts only what reads it,
one node at a time (etcd members, control planes, workers), and writes the
admin kubeconfig again, so kubectl keeps working. Service-account tokens are
signed by their own key and keep working.

Every node must be running. If the rotation is interrupted, run the command
again: it continues from the phase recorded in the cluster's PKI directory
(ca-rotation.json). A rotation of another CA is refused until that one is
finished.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ca == "" {
				return fmt.Errorf("--ca is required: kubernetes, etcd, front-proxy or apps")
			}
			env, cluster, rest, err := runningClusterEnv(g, cmd, &pf, args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return fmt.Errorf("no cluster %q in lab.yaml", rest[0])
			}
			return runPhasesWith(cmd, env, &pf, "rotate-ca", dryRun, func(ctx context.Context) ([]lab.Phase, error) {
				return env.RotateCAPhases(ctx, cluster, ca)
			})
		},
	}
	cmd.Flags().StringVar(&ca, "ca", "", "the CA to rotate: kubernetes, etcd, front-proxy or apps")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	pf.add(cmd)
	return cmd
}

func newRotateEncryptionKeyCmd(g *globalOptions) *cobra.Command {
	var dryRun bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "rotate-encryption-key [CLUSTER]",
		Short: "Replace the key Secrets are encrypted with in etcd, rewriting every Secret",
		Long: `Make a new key for encrypting Secrets at rest and retire the old one without
a moment in which an API server cannot read a Secret: the API servers learn
the new key, then write with it, every Secret is rewritten, then the old key
is dropped. Each step restarts the API servers one control plane at a time.
Then every Secret is read from etcd to check it is encrypted with the new key.

If the rotation is interrupted, run the command again: it continues from the
key list in the cluster's encryption configuration.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, cluster, rest, err := runningClusterEnv(g, cmd, &pf, args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return fmt.Errorf("no cluster %q in lab.yaml", rest[0])
			}
			return runPhasesWith(cmd, env, &pf, "rotate-encryption-key", dryRun, func(ctx context.Context) ([]lab.Phase, error) {
				return env.RotateEncryptionPhases(ctx, cluster)
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	pf.add(cmd)
	return cmd
}

// expiryWarnings names every certificate of the lab that expires within
// window (or has), for kubelab status.
func expiryWarnings(labDir string, clusters []string, now time.Time, window time.Duration) []string {
	var out []string
	for _, c := range clusters {
		infos, err := pki.List(labDir, c)
		if err != nil {
			continue // no PKI yet: nothing to expire
		}
		for _, i := range infos {
			if i.NotAfter.After(now.Add(window)) {
				continue
			}
			how := fmt.Sprintf("kubelab certs renew %s %s", c, filepath.ToSlash(i.Name))
			if i.IsCA {
				how = fmt.Sprintf("kubelab certs rotate-ca %s --ca %s", c, pki.AliasOf(i.Name))
			}
			when := fmt.Sprintf("expires in %d days (%s)", i.DaysLeft(now), i.NotAfter.UTC().Format(time.DateOnly))
			if i.DaysLeft(now) < 0 || now.After(i.NotAfter) {
				when = "EXPIRED " + i.NotAfter.UTC().Format(time.DateOnly)
			}
			out = append(out, fmt.Sprintf("warning: cluster %s: certificate %s %s; %s", c, filepath.ToSlash(i.Name), when, how))
		}
	}
	return out
}

func writeCertTable(cmd *cobra.Command, infos []pki.CertInfo, now time.Time) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tNAME\tSUBJECT\tISSUER\tNOT AFTER\tDAYS LEFT")
	for _, i := range infos {
		subject := "CN=" + i.CommonName
		if len(i.Organization) > 0 {
			subject += ",O=" + strings.Join(i.Organization, "+")
		}
		days := fmt.Sprint(i.DaysLeft(now))
		if i.DaysLeft(now) < 0 {
			days += " (EXPIRED)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Cluster, filepath.ToSlash(i.Name), subject, i.Issuer,
			i.NotAfter.UTC().Format(time.DateOnly), days)
	}
	return tw.Flush()
}
