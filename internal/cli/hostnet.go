package cli

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/hostnet"
)

// hostnetConfig is the lab's host network from its plan; its files live in
// the lab directory's hostnet/.
func hostnetConfig(g *globalOptions, cmd *cobra.Command) (hostnet.Config, error) {
	_, p, err := loadPlan(g, cmd.ErrOrStderr())
	if err != nil {
		return hostnet.Config{}, err
	}
	dir, err := g.labDir()
	if err != nil {
		return hostnet.Config{}, err
	}
	return hostnet.FromPlan(p, filepath.Join(dir, "hostnet")), nil
}

func printHostnet(cmd *cobra.Command, st hostnet.State, output string) error {
	switch output {
	case "", "text":
		_, err := fmt.Fprint(cmd.OutOrStdout(), st.Text())
		return err
	case "json":
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
		return err
	}
	return fmt.Errorf("-o %q: use text or json", output)
}

func newHostnetCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "hostnet",
		Short: "Show the lab's host network: namespace, bridge, taps, veth, NAT and port forwards",
		Long: `Show what exists of the lab's host network, read from the kernel: the
lab namespace (if any), the bridge and its address, one tap per node and
whether it is attached and in use, the veth to the lab namespace with its
routes, and the nftables table kubelab-<lab> with the NAT and port forwards.
Nothing is changed. 'kubelab up' creates it and 'kubelab destroy' removes it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hostnetConfig(g, cmd)
			if err != nil {
				return err
			}
			st, err := hostnet.Show(cmd.Context(), c)
			if err != nil {
				return err
			}
			return printHostnet(cmd, st, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")

	apply := &cobra.Command{
		Use:    "apply",
		Short:  "Create or converge the host network of the lab (normally part of up; for debugging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hostnetConfig(g, cmd)
			if err != nil {
				return err
			}
			start := time.Now()
			st, err := hostnet.Apply(cmd.Context(), c)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "hostnet apply: done in %s\n", time.Since(start).Round(time.Millisecond))
			return printHostnet(cmd, st, output)
		},
	}
	apply.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	remove := &cobra.Command{
		Use:    "remove",
		Short:  "Remove the host network of the lab (normally part of destroy; for debugging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := hostnetConfig(g, cmd)
			if err != nil {
				return err
			}
			start := time.Now()
			if err := hostnet.Remove(cmd.Context(), c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "hostnet remove: done in %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.AddCommand(apply, remove)
	return cmd
}
