package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubelab/kubelab/internal/pki"
)

func newCertsCmd(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "certs [CLUSTER]",
		Short: "List every cluster certificate with its subject, issuer and expiry (reads only)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: use text or json", output)
			}
			_, p, err := loadPlan(g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			labDir, err := g.labDir()
			if err != nil {
				return err
			}
			var clusters []string
			for _, c := range p.Clusters {
				if len(args) == 0 || args[0] == c.Name {
					clusters = append(clusters, c.Name)
				}
			}
			if len(clusters) == 0 {
				var names []string
				for _, c := range p.Clusters {
					names = append(names, c.Name)
				}
				return fmt.Errorf("no cluster %q in the lab; clusters are %s", args[0], strings.Join(names, ", "))
			}
			var all []pki.CertInfo
			var missing []string
			for _, c := range clusters {
				infos, err := pki.List(labDir, c)
				if errors.Is(err, fs.ErrNotExist) {
					missing = append(missing, c)
					continue
				}
				if err != nil {
					return err
				}
				all = append(all, infos...)
			}
			for _, c := range missing {
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s has no certificates yet (%s does not exist); run kubelab render\n",
					c, pki.Dir(labDir, c))
			}
			if output == "json" {
				if all == nil {
					all = []pki.CertInfo{}
				}
				out, err := json.MarshalIndent(all, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", out)
				return err
			}
			if len(all) == 0 {
				return nil
			}
			return writeCertTable(cmd, all, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func writeCertTable(cmd *cobra.Command, infos []pki.CertInfo, now time.Time) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tNAME\tSUBJECT\tISSUER\tNOT AFTER\tDAYS LEFT")
	for _, i := range infos {
		subject := "CN=" + i.CommonName
		if len(i.Organization) > 0 {
			subject += ",O=" + strings.Join(i.Organization, "+")
		}
		days := fmt.Sprint(i.DaysLeft(now))
		if i.DaysLeft(now) < 0 {
			days += " (EXPIRED)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Cluster, filepath.ToSlash(i.Name), subject, i.Issuer,
			i.NotAfter.UTC().Format(time.DateOnly), days)
	}
	return tw.Flush()
}
