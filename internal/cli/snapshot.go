package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/hypervisor"
	"github.com/kubelab/kubelab/internal/lab"
	"github.com/kubelab/kubelab/internal/plan"
)

func newSnapshotCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save, restore, list and delete whole-cluster snapshots (memory, devices and disks of every node)",
	}
	cmd.AddCommand(newSnapshotSaveCmd(g), newSnapshotRestoreCmd(g), newSnapshotListCmd(g), newSnapshotDeleteCmd(g))
	return cmd
}

// clusterAndName reads [CLUSTER] NAME.
func clusterAndName(args []string) (cluster, name string) {
	if len(args) == 2 {
		return args[0], args[1]
	}
	return "", args[0]
}

func newSnapshotSaveCmd(g *globalOptions) *cobra.Command {
	return snapshotPhasesCmd(g, "save", "Pause every node of the cluster, save its state, resume; CLUSTER may be left out when the lab has one",
		func(ctx context.Context, env *lab.Env, c plan.Cluster, name string) ([]lab.Phase, error) {
			return env.SnapshotSavePhases(c, name)
		})
}

func newSnapshotRestoreCmd(g *globalOptions) *cobra.Command {
	return snapshotPhasesCmd(g, "restore", "Bring the cluster back to a snapshot: every node replaced by its saved state, clocks stepped, Ready again",
		func(ctx context.Context, env *lab.Env, c plan.Cluster, name string) ([]lab.Phase, error) {
			return env.SnapshotRestorePhases(ctx, c, name)
		})
}

// snapshotPhasesCmd is `snapshot VERB [CLUSTER] NAME`, run as phases under
// the lab's lock with the usual progress flags.
func snapshotPhasesCmd(g *globalOptions, verb, short string,
	phases func(context.Context, *lab.Env, plan.Cluster, string) ([]lab.Phase, error)) *cobra.Command {
	var dryRun bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   verb + " [CLUSTER] NAME",
		Short: short,
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			clusterName, name := clusterAndName(args)
			c, err := env.SnapshotCluster(clusterName)
			if err != nil {
				return err
			}
			// Refuse a bad, taken or missing name before the lock is
			// taken or anything written; the phases check again.
			if err := env.SnapshotPrecheck(c, name, verb == "save"); err != nil {
				return err
			}
			if verb == "restore" {
				if err := hypervisor.Check(env.Lab); err != nil {
					return err
				}
			}
			return runPhasesWith(cmd, env, &pf, "snapshot-"+verb, dryRun, func(ctx context.Context) ([]lab.Phase, error) {
				return phases(ctx, env, c, name)
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	pf.add(cmd)
	return cmd
}

func newSnapshotListCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list [CLUSTER...]",
		Short: "List snapshots with their size",
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: use text or json", output)
			}
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			rows, err := env.Snapshots()
			if err != nil {
				return err
			}
			if output == "json" {
				if rows == nil {
					rows = []lab.SnapshotInfo{}
				}
				b, err := json.MarshalIndent(rows, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tNAME\tCREATED\tNODES\tSIZE")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.Cluster, r.Name, r.Created, r.Nodes, humanBytes(r.Bytes))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newSnapshotDeleteCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete [CLUSTER] NAME",
		Short: "Remove a snapshot",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			clusterName, name := clusterAndName(args)
			c, err := env.SnapshotCluster(clusterName)
			if err != nil {
				return err
			}
			lock, err := lab.Acquire(env.Layout, "snapshot-delete")
			if err != nil {
				return err
			}
			defer lock.Release()
			if err := env.DeleteSnapshot(c, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted snapshot %s of cluster %s\n", name, c.Name)
			return nil
		},
	}
}

// humanBytes prints a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
