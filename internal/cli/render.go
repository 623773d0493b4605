package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/lab"
	"github.com/kubelab/kubelab/internal/versions"
)

func newRenderCmd(g *globalOptions) *cobra.Command {
	var allFormats bool
	cmd := &cobra.Command{
		Use:   "render [CLUSTER...]",
		Short: "Make every key, certificate, kubeconfig and node configuration in the lab directory",
		Long: "Render validates lab.yaml, plans it, and writes into the lab directory: each\n" +
			"cluster's PKI and kubeconfigs, ssh keys, each node's configuration in its\n" +
			"provisioning format (overlay.tar, cloud-init/, ignition.json) and the add-on\n" +
			"manifests. Existing keys and certificates are reused, never rotated.",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			for _, name := range args {
				if _, ok := p.Cluster(name); !ok {
					return fmt.Errorf("no cluster %q in lab.yaml", name)
				}
			}
			dir, err := g.labDir()
			if err != nil {
				return err
			}
			var res lab.RenderResult
			_, err = lab.Runner{Out: cmd.OutOrStdout()}.Run(context.Background(), []lab.Phase{{
				Name:     "render",
				Describe: func() string { return "write PKI, ssh keys and node configurations under " + dir },
				Run: func(context.Context) error {
					res, err = lab.Render(lab.RenderInput{Layout: lab.Layout{Dir: dir}, Lab: l, Plan: p,
						Versions: versions.Default(), AllFormats: allFormats, Clusters: args})
					return err
				},
			}})
			if err != nil {
				return err
			}
			res.Summary(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().BoolVar(&allFormats, "all-formats", false, "render overlay, cloud-init and ignition for every node, not just its own format")
	return cmd
}
