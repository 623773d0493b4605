package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

func newPlanCmd(g *globalOptions) *cobra.Command {
	var output, diagram string
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
			case "svg":
				out = p.SVG()
			default:
				return fmt.Errorf("-o %q: use text, json, yaml or svg", output)
			}
			if err != nil {
				return err
			}
			if diagram != "" {
				if err := os.WriteFile(diagram, p.SVG(), 0o644); err != nil {
					return fmt.Errorf("--diagram: %w", err)
				}
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text, json, yaml or svg (a diagram of the lab's networks and nodes)")
	cmd.Flags().StringVar(&diagram, "diagram", "", "also write the SVG diagram to this file")
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
