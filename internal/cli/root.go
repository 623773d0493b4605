// Package cli holds one file per kubelab command. Commands parse flags,
// call the packages that do the work and print; they hold no logic.
package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	dir string // lab directory
}

// labDir resolves the lab directory: --dir, then $KUBELAB_HOME, then
// ~/.kubelab/default.
func (o *globalOptions) labDir() (string, error) {
	if o.dir != "" {
		return filepath.Abs(o.dir)
	}
	if env := os.Getenv("KUBELAB_HOME"); env != "" {
		return filepath.Abs(env)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory for the lab (set --dir or KUBELAB_HOME): %w", err)
	}
	return filepath.Join(home, ".kubelab", "default"), nil
}

// specPath is the lab.yaml inside the lab directory.
func (o *globalOptions) specPath() (string, error) {
	dir, err := o.labDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "lab.yaml"), nil
}

// newRoot builds the command tree. Each command lives in its own file and
// registers itself through one constructor listed here.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	opts := &globalOptions{}
	root := &cobra.Command{
		Use:           "kubelab",
		Short:         "Real multi-node Kubernetes clusters in VMs on one host",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&opts.dir, "dir", "", "lab directory (default $KUBELAB_HOME or ~/.kubelab/default)")
	// One constructor per command file, in the order help lists them.
	for _, add := range []func(*globalOptions) *cobra.Command{
		newInitCmd,
		newPlanCmd,
		newCertsCmd,
		newRenderCmd,
		newComponentsCmd,
		newImageCmd,
		newUpCmd,
		newStatusCmd,
		newCheckCmd,
		newStopCmd,
		newStartCmd,
		newRefreshCmd,
		newDestroyCmd,
		newSnapshotCmd,
		newSSHCmd,
		newConsoleCmd,
		newLogsCmd,
		newKubeconfigCmd,
		newHostnetCmd,
		newServeCmd,
		newVersionCmd,
	} {
		root.AddCommand(add(opts))
	}
	return root
}

// Main runs kubelab with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(stderr, "kubelab: %v\n", err)
		return 1
	}
	return 0
}
