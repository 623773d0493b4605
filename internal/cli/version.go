package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newVersionCmd(_ *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kubelab's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "kubelab (development build)")
			return nil
		},
	}
}
