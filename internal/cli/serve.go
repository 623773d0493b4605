package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/lab"
)

func newServeCmd(g *globalOptions) *cobra.Command {
	var (
		foreground, stop bool
		port             int
	)
	cmd := &cobra.Command{
		Use:   "serve [--foreground] [--port N] [--stop]",
		Short: "Run the lab's config server (each node's Ignition and NoCloud data over HTTP)",
		Long: "serve runs the lab's config server on the lab network's gateway address, inside\n" +
			"the lab's namespace when it has one: each node provisioned by Ignition or\n" +
			"cloud-init gets its own files under /<cluster>/<node>/<token>/, only from its own\n" +
			"address and with its own token; anything else gets 404. Every fetch is logged\n" +
			"to serve/fetch.log in the lab directory (tokens never are).\n\n" +
			"Without --foreground it starts in the background (pid file serve/serve.pid) unless\n" +
			"it runs already; --stop stops it. --foreground runs it in this terminal and\n" +
			"prints each fetch.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := g.labDir()
			if err != nil {
				return err
			}
			layout := lab.Layout{Dir: dir}
			out := cmd.OutOrStdout()
			if stop {
				stopped, err := lab.StopServe(layout)
				if err != nil {
					return err
				}
				if stopped {
					fmt.Fprintln(out, "config server stopped")
				} else {
					fmt.Fprintln(out, "config server was not running")
				}
				return nil
			}
			_, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if foreground {
				ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
				defer cancel()
				return lab.Serve(ctx, layout, p, port, out)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the kubelab binary: %w", err)
			}
			pid, started, err := lab.StartServe(layout, exe, port)
			if err != nil {
				return err
			}
			if started {
				fmt.Fprintf(out, "config server started (pid %d) on http://%s:%d; fetch log %s\n", pid, p.Network.Gateway, port, layout.ServeFetchLog())
			} else {
				fmt.Fprintf(out, "config server runs already (pid %d)\n", pid)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&foreground, "foreground", false, "run in this terminal, printing each fetch")
	cmd.Flags().BoolVar(&stop, "stop", false, "stop the background config server")
	cmd.Flags().IntVar(&port, "port", lab.DefaultServePort, "TCP port on the gateway address")
	return cmd
}
