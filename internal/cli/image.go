package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/image"
)

func newImageCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, import and list node images",
	}
	cmd.AddCommand(newImageBuildCmd(g), newImageImportCmd(g), newImageListCmd(g))
	return cmd
}

// componentsDir picks the components to build from: --components, else the
// newest complete set in the cache.
func componentsDir(flag, cacheDir string) (string, error) {
	if flag != "" {
		return filepath.Abs(flag)
	}
	return image.NewestComponents(cacheDir)
}

func newImageBuildCmd(g *globalOptions) *cobra.Command {
	var compDir, name string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build kubelab's node image from Debian packages and the built components",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lab, err := g.labDir()
			if err != nil {
				return err
			}
			cache, err := image.DefaultCacheDir()
			if err != nil {
				return err
			}
			dir, err := componentsDir(compDir, cache)
			if err != nil {
				return err
			}
			comps, err := image.LoadComponents(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "image: components from %s\n", dir)
			built, err := image.Build(cmd.Context(), image.BuildOptions{Components: comps, CacheDir: cache, Progress: out})
			if err != nil {
				return err
			}
			dest, err := image.Install(built.Dir, lab, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "image: %s ready in %s\n", name, dest)
			return nil
		},
	}
	cmd.Flags().StringVar(&compDir, "components", "", "components directory (default: newest under $KUBELAB_CACHE/components)")
	cmd.Flags().StringVar(&name, "name", "kubelab", "image name in the lab")
	return cmd
}

func newImageImportCmd(g *globalOptions) *cobra.Command {
	var o image.ImportOptions
	cmd := &cobra.Command{
		Use:   "import FILE|URL",
		Short: "Import a foreign image (Flatcar, Fedora CoreOS, cloud image) after checking its signature or checksum",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lab, err := g.labDir()
			if err != nil {
				return err
			}
			if o.CacheDir, err = image.DefaultCacheDir(); err != nil {
				return err
			}
			o.Source = args[0]
			o.Progress = cmd.OutOrStdout()
			imp, err := image.Import(cmd.Context(), o)
			if err != nil {
				return err
			}
			dest, err := image.InstallImported(cmd.Context(), imp, lab, imp.Manifest.Name, o.Progress)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.Progress, "image: %s (%s) ready in %s\n", imp.Manifest.Name,
				strings.Join(imp.Manifest.Provisioning, ","), dest)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Keyring, "keyring", "", "OpenPGP public keyring (armored or binary) to check --signature with")
	f.StringVar(&o.Signature, "signature", "", "detached OpenPGP signature of the download (file or URL)")
	f.StringVar(&o.SHA256, "sha256", "", "expected sha256 of the download")
	f.StringVar(&o.Name, "name", "", "image name in the lab (default: from the file name)")
	f.StringVar(&o.Provisioning, "provisioning", "", "ignition or cloud-init (default: guessed from the name)")
	return cmd
}

func newImageListCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the lab's images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lab, err := g.labDir()
			if err != nil {
				return err
			}
			imgs, err := image.List(lab)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tKIND\tPROVISIONING\tKUBERNETES\tCREATED")
			for _, i := range imgs {
				k8s := i.Manifest.Components["Kubernetes"]
				if k8s == "" {
					k8s = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", filepath.Base(i.Dir), i.Manifest.Kind,
					strings.Join(i.Manifest.Provisioning, ","), k8s, i.Manifest.Created)
			}
			return w.Flush()
		},
	}
}
