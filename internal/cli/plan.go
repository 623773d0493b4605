package cli

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

func newPlanCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Validate lab.yaml and print the address plan: networks, nodes and host forwards",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var out []byte
			switch output {
			case "", "text":
				out = p.Text()
			case "json":
				out, err = p.JSON()
			case "yaml":
				out, err = p.YAML()
			default:
				return fmt.Errorf("-o %q: use text, json or yaml", output)
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text, json or yaml")
	return cmd
}

// loadPlan reads, validates and plans the lab's spec, printing warnings.
// Nothing on the host is touched before this succeeds.
func loadPlan(g *globalOptions, warn io.Writer) (*spec.Lab, *plan.Plan, error) {
	path, err := g.specPath()
	if err != nil {
		return nil, nil, err
	}
	lab, warnings, err := spec.Load(path)
	for _, w := range warnings {
		fmt.Fprintf(warn, "warning: %s: %s\n", path, w.Error())
	}
	if err != nil {
		return nil, nil, err
	}
	p, err := plan.New(lab, filepath.Dir(path))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return lab, p, nil
}
