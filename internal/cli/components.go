package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/components"
	"github.com/kubelab/kubelab/internal/versions"
)

func newComponentsCmd(_ *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "components",
		Short: "Build, fetch and list the node components (Kubernetes, etcd, containerd, ...)",
	}
	cmd.AddCommand(newComponentsBuildCmd(), newComponentsListCmd())
	return cmd
}

func newComponentsBuildCmd() *cobra.Command {
	var (
		source, kubeSrc, kubeVersion, mirror string
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or download) the node components into the cache; a no-op when cached",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src := components.Source(source)
			if kubeSrc != "" && !cmd.Flags().Changed("source") {
				src = components.SourceLocal
			}
			vs := versions.Default()
			opts := components.Options{
				Versions:      vs,
				Source:        src,
				KubernetesSrc: kubeSrc,
				ReleaseMirror: mirror,
				Progress:      cmd.OutOrStdout(),
			}
			if kubeVersion != "" {
				if src == components.SourceLocal {
					opts.KubernetesVersion = kubeVersion
				} else {
					opts.Versions.Kubernetes = kubeVersion
				}
			}
			res, err := components.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&source, "source", string(components.SourceModules), "where binaries come from: modules (build from upstream source via the Go module proxy), local (Kubernetes from --kubernetes-src), release (official downloads, sha256-verified)")
	f.StringVar(&kubeSrc, "kubernetes-src", "", "local Kubernetes checkout to build the Kubernetes binaries from (implies --source local)")
	f.StringVar(&kubeVersion, "kubernetes-version", "", "Kubernetes version to build (modules/release), or the version stamped into a local tree's binaries")
	f.StringVar(&mirror, "release-mirror", "", "base URL replacing https:// in release downloads (source release)")
	return cmd
}

func newComponentsListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the cached component sets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := components.List("")
			if err != nil {
				return err
			}
			if len(list) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no components cached; run: kubelab components build")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tSOURCE\tKUBERNETES\tETCD\tCONTAINERD\tFILES\tDIR")
			for _, r := range list {
				m := r.Manifest
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", m.Key, m.Source, m.KubernetesVersion, m.Versions.Etcd, m.Versions.Containerd, len(m.Files), r.Dir)
			}
			return tw.Flush()
		},
	}
}
