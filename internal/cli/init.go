package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/spec"
)

func newInitCmd(g *globalOptions) *cobra.Command {
	var topology string
	var force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented lab.yaml for a topology into the lab directory",
		Long: "Write a commented lab.yaml into the lab directory. Topologies:\n" +
			"  default    one control plane with stacked etcd, two workers\n" +
			"  xen-guide  one control plane, three external etcd nodes, workers\n" +
			"  ha         three control planes with stacked etcd, workers",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := spec.Template(topology)
			if err != nil {
				return err
			}
			path, err := g.specPath()
			if err != nil {
				return err
			}
			if _, err := os.Stat(path); err == nil && !force {
				return fmt.Errorf("%s already exists; edit it, or pass --force to replace it", path)
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return fmt.Errorf("create lab directory: %w", err)
			}
			if err := os.WriteFile(path, data, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (topology %s)\nnext: kubelab plan\n", path, topology)
			return nil
		},
	}
	cmd.Flags().StringVarP(&topology, "topology", "t", "default", "one of "+strings.Join(spec.Topologies(), ", "))
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing lab.yaml")
	return cmd
}
