package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/hypervisor"
	"github.com/kubelab/kubelab/internal/lab"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/progress"
	"github.com/kubelab/kubelab/internal/versions"
)

// loadEnv validates and plans the spec and sets up the lifecycle
// environment with the lab's hypervisor driver. Nothing is touched before
// it succeeds. Commands that start machines also check the host can run
// them (bootable).
func loadEnv(g *globalOptions, cmd *cobra.Command, clusters []string) (*lab.Env, error) {
	l, p, err := loadPlan(g, cmd.ErrOrStderr())
	if err != nil {
		return nil, err
	}
	for _, name := range clusters {
		if _, ok := p.Cluster(name); !ok {
			return nil, fmt.Errorf("no cluster %q in lab.yaml", name)
		}
	}
	dir, err := g.labDir()
	if err != nil {
		return nil, err
	}
	layout := lab.Layout{Dir: dir}
	d, err := hypervisor.New(l, layout.ImageKernel(l.Defaults.Image))
	if err != nil {
		return nil, err
	}
	// The config server runs as this binary in the background.
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the kubelab binary: %w", err)
	}
	return &lab.Env{
		Layout:   layout,
		Lab:      l,
		Plan:     p,
		Versions: versions.Default(),
		Driver:   d,
		Out:      cmd.OutOrStdout(),
		Clusters: clusters,
		Exe:      exe,
	}, nil
}

// progressFlags are the lifecycle commands' -q and -o: how progress is
// shown.
type progressFlags struct {
	quiet  bool
	output string
}

func (f *progressFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "print only the line that ends each phase (and errors)")
	cmd.Flags().StringVarP(&f.output, "output", "o", progress.FormatText,
		"text (live lines on a terminal, plain lines otherwise) or json (one JSON event per line on stdout, nothing else)")
}

// check rejects an unknown -o value; commands call it before touching
// anything.
func (f *progressFlags) check() error {
	if err := progress.CheckFormat(f.output); err != nil {
		return fmt.Errorf("invalid value %q for flag -o/--output: allowed values are %s and %s",
			f.output, progress.FormatText, progress.FormatJSON)
	}
	return nil
}

// reporter renders progress on the command's stdout: live when stdout is
// a terminal, plain lines otherwise, or as -q and -o ask.
func (f *progressFlags) reporter(cmd *cobra.Command) (*progress.Reporter, error) {
	out := cmd.OutOrStdout()
	width, height, terminal := progress.Terminal(out)
	rep, err := progress.New(progress.Options{Out: out, Err: cmd.ErrOrStderr(), Format: f.output,
		Quiet: f.quiet, Terminal: terminal, Width: width, Height: height})
	if err != nil {
		return nil, fmt.Errorf("progress output: %w", err)
	}
	return rep, nil
}

// runPhases takes the lab's lock, runs the phases with Ctrl-C cancelling
// them, and stores their timings for benchmarks. Progress is shown the
// default way (live on a terminal, plain lines otherwise).
func runPhases(cmd *cobra.Command, env *lab.Env, name string, dryRun bool, phases func(context.Context) ([]lab.Phase, error)) error {
	return runPhasesWith(cmd, env, &progressFlags{}, name, dryRun, phases)
}

// runPhasesWith is runPhases with progress shown as pf (-q, -o) asks.
func runPhasesWith(cmd *cobra.Command, env *lab.Env, pf *progressFlags, name string, dryRun bool, phases func(context.Context) ([]lab.Phase, error)) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !dryRun {
		lock, err := lab.Acquire(env.Layout, name)
		if err != nil {
			return err
		}
		defer lock.Release()
	}
	rep, err := pf.reporter(cmd)
	if err != nil {
		return err
	}
	defer rep.Close()
	// Free text of the phases goes through the reporter too, so it does
	// not break live lines or JSON output.
	env.Progress, env.Out = rep, rep.Writer()
	ps, err := phases(ctx)
	if err != nil {
		return err
	}
	timings, err := lab.Runner{Out: env.Out, DryRun: dryRun, Progress: rep}.Run(ctx, ps)
	if !dryRun && len(timings) > 0 {
		if werr := lab.WriteTimings(env.Layout.Timings(name), name, timings); werr != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", werr)
		}
	}
	return err
}

// bootFlags are the boot options up and start share.
type bootFlags struct {
	together, noTemplate bool
	bootTimeout          time.Duration
}

func (b *bootFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&b.together, "boot-together", false, "start every node at once (default: control plane and etcd nodes first, workers once the API server is ready)")
	cmd.Flags().BoolVar(&b.noTemplate, "no-template", false, "boot new nodes instead of resuming the image's node template (made once per node shape, then reused)")
	cmd.Flags().DurationVar(&b.bootTimeout, "boot-timeout", 0, "how long to wait for every node's readiness marker (default 10m under emulation, 2m30s with KVM; more for nested hypervisors)")
}

func (b *bootFlags) apply(env *lab.Env) {
	env.BootTogether = b.together
	env.NoTemplates = b.noTemplate
	env.Timeouts.Boot = b.bootTimeout
}

func newUpCmd(g *globalOptions) *cobra.Command {
	var dryRun, noMerge bool
	var bf bootFlags
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "up [CLUSTER...]",
		Short: "Bring the lab (or some clusters) to Ready: render, image, network, disks, boot, etcd, API, add-ons, nodes",
		Long: "up converges from any state (nothing, partial, stopped, after a crash or Ctrl-C).\n" +
			"Each phase prints its duration; timings go to <labdir>/timings-up.json.\n" +
			"While a phase waits, each node's or cluster's status is shown (live on a terminal);\n" +
			"-q keeps only the phase lines, -o json prints one JSON event per line.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			env.MergeKubeconfig = !noMerge
			bf.apply(env)
			if err := hypervisor.Check(env.Lab); err != nil {
				return err
			}
			return runPhasesWith(cmd, env, &pf, "up", dryRun, func(ctx context.Context) ([]lab.Phase, error) { return env.UpPhases(ctx), nil })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what each phase would do, do nothing")
	cmd.Flags().BoolVar(&noMerge, "no-merge", false, "do not add contexts to the user's kubeconfig")
	bf.add(cmd)
	pf.add(cmd)
	return cmd
}

func newStartCmd(g *globalOptions) *cobra.Command {
	var dryRun bool
	var bf bootFlags
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "start [CLUSTER...]",
		Short: "Start stopped nodes and wait until the clusters are Ready again (same as up)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			bf.apply(env)
			if err := hypervisor.Check(env.Lab); err != nil {
				return err
			}
			return runPhasesWith(cmd, env, &pf, "start", dryRun, func(ctx context.Context) ([]lab.Phase, error) { return env.UpPhases(ctx), nil })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what each phase would do, do nothing")
	bf.add(cmd)
	pf.add(cmd)
	return cmd
}

func newStopCmd(g *globalOptions) *cobra.Command {
	var dryRun, suspend bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "stop [CLUSTER...]",
		Short: "Power the nodes off (or --suspend them); disks, network and PKI stay for start",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			return runPhasesWith(cmd, env, &pf, "stop", dryRun, func(context.Context) ([]lab.Phase, error) { return env.StopPhases(suspend) })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	cmd.Flags().BoolVar(&suspend, "suspend", false, "save each node's memory and device state instead of shutting it down; start resumes it in seconds")
	pf.add(cmd)
	return cmd
}

func newDestroyCmd(g *globalOptions) *cobra.Command {
	var dryRun, purge bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "destroy [CLUSTER...]",
		Short: "Remove VMs, disks, taps, bridge and rules (when unused), kubeconfig contexts; keeps the PKI unless --purge",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			return runPhasesWith(cmd, env, &pf, "destroy", dryRun, func(context.Context) ([]lab.Phase, error) { return env.DestroyPhases(purge), nil })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed, remove nothing")
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove the clusters' PKI and directories")
	pf.add(cmd)
	return cmd
}

func newRefreshCmd(g *globalOptions) *cobra.Command {
	var dryRun bool
	var pf progressFlags
	cmd := &cobra.Command{
		Use:   "refresh NODE",
		Short: "Re-provision a node from its image, keeping its identity; it rejoins",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			if err := hypervisor.Check(env.Lab); err != nil {
				return err
			}
			return runPhasesWith(cmd, env, &pf, "refresh", dryRun, func(ctx context.Context) ([]lab.Phase, error) { return env.RefreshPhases(ctx, args[0]) })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done, do nothing")
	pf.add(cmd)
	return cmd
}

// expiryWarning: status warns about certificates expiring this soon.
const expiryWarning = 30 * 24 * time.Hour

func newStatusCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [CLUSTER...]",
		Short: "Show every node's VM state, address, ssh forward and Kubernetes readiness",
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			rows, err := env.Status(cmd.Context())
			if err != nil {
				return err
			}
			var clusters []string
			for _, c := range env.Plan.Clusters {
				if len(args) == 0 || slices.Contains(args, c.Name) {
					clusters = append(clusters, c.Name)
				}
			}
			for _, w := range expiryWarnings(env.Layout.Dir, clusters, time.Now(), expiryWarning) {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			if output == "json" {
				b, err := json.MarshalIndent(rows, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tNODE\tROLES\tSTATE\tADDRESS\tSSH\tREADY")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Cluster, r.Node, strings.Join(r.Roles, ","), r.State, r.Address, r.SSH, r.Ready)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// sshArgs logs in to node as root (lab.Env.SSHArgs: the lab's key, the
// node's pinned host key, no prompts).
func sshArgs(env *lab.Env, node string, command []string) ([]string, error) {
	_, n, ok := env.Plan.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %q in lab.yaml", node)
	}
	return env.SSHArgs(n, command...), nil
}

func newSSHCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh NODE [COMMAND...]",
		Short: "Log in to a node as root (lab key, pinned host key, no prompts)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			sa, err := sshArgs(env, args[0], args[1:])
			if err != nil {
				return err
			}
			bin, err := exec.LookPath("ssh")
			if err != nil {
				return fmt.Errorf("ssh client not found (apt-get install openssh-client): %w", err)
			}
			return syscall.Exec(bin, sa, os.Environ())
		},
	}
	// Flags after NODE belong to the remote command, not to kubelab.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func newLogsCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "logs NODE [UNIT]",
		Short: "Print a node's journal of this boot (or one unit's), over ssh",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			remote := []string{"journalctl", "-b", "--no-pager"}
			if len(args) == 2 {
				remote = append(remote, "-u", args[1])
			}
			sa, err := sshArgs(env, args[0], remote)
			if err != nil {
				return err
			}
			c := exec.CommandContext(cmd.Context(), sa[0], sa[1:]...)
			c.Stdout, c.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.Run(); err != nil {
				return fmt.Errorf("logs of %s: %w (is the node up? try kubelab console %s)", args[0], err, args[0])
			}
			return nil
		},
	}
}

func newConsoleCmd(g *globalOptions) *cobra.Command {
	var noFollow bool
	cmd := &cobra.Command{
		Use:   "console NODE",
		Short: "Show a node's serial console log and follow it (Ctrl-C to leave)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, nil)
			if err != nil {
				return err
			}
			c, n, ok := env.Plan.Node(args[0])
			if !ok {
				return fmt.Errorf("no node %q in lab.yaml", args[0])
			}
			m, err := env.Machine(c, n)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			return followFile(ctx, env.Driver.ConsolePath(m), cmd.OutOrStdout(), !noFollow)
		},
	}
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print what is there and exit")
	return cmd
}

// followFile copies path to w and, when follow is set, keeps copying what
// is appended until ctx ends.
func followFile(ctx context.Context, path string, w io.Writer, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("console log: %w (has the node been started?)", err)
	}
	defer f.Close()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func newKubeconfigCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig CLUSTER",
		Short: "Print the cluster's admin kubeconfig",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := loadEnv(g, cmd, args)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(pki.KubeconfigPath(pki.Dir(env.Layout.Dir, args[0]), pki.Admin))
			if err != nil {
				return fmt.Errorf("kubeconfig of %s: %w (run kubelab render or up)", args[0], err)
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
}
