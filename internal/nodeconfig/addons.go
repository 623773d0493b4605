package nodeconfig

import (
	"bytes"
	"embed"
	"fmt"
	"text/template"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/versions"
)

// Manifest is one add-on, possibly several YAML documents, applied by
// kubelab once the API server answers.
type Manifest struct {
	Name string
	YAML []byte
}

//go:embed addons/*.yaml
var addonFS embed.FS

var addonTemplates = template.Must(template.New("addons").Option("missingkey=error").ParseFS(addonFS, "addons/*.yaml"))

// addonOrder is the order the add-ons are applied in: RBAC first, so the
// admin identity works and the API server can reach kubelets.
var addonOrder = []string{"rbac.yaml", "coredns.yaml"}

// KubeletClientUser is the user the API server's kubelet client
// certificate names (pki.APIServerKubeletClient).
const KubeletClientUser = "kube-apiserver-kubelet-client"

// Addons are the cluster add-ons kubelab applies, in order.
func Addons(p *plan.Plan, c plan.Cluster, v versions.Set) ([]Manifest, error) {
	if !c.DNSServiceIP.IsValid() {
		return nil, fmt.Errorf("add-ons of cluster %s: the plan has no cluster DNS address", c.Name)
	}
	if c.ClusterDomain == "" {
		return nil, fmt.Errorf("add-ons of cluster %s: the plan has no cluster domain", c.Name)
	}
	lab := ""
	if p != nil {
		lab = p.Lab
	}
	data := map[string]any{
		"AdminGroup":        pki.AdminGroup,
		"KubeletClientUser": KubeletClientUser,
		"Domain":            c.ClusterDomain,
		"Image":             v.CoreDNSImage(),
		"DNSServiceIP":      c.DNSServiceIP.String(),
		"DualStack":         c.ServiceCIDR6.IsValid(),
	}
	var out []Manifest
	for _, name := range addonOrder {
		var buf bytes.Buffer
		buf.WriteString(header("#", fmt.Sprintf("the plan of lab %q, cluster %q", lab, c.Name), "Add-on applied by kubelab once the API server answers."))
		if err := addonTemplates.ExecuteTemplate(&buf, name, data); err != nil {
			return nil, fmt.Errorf("add-on %s of cluster %s: %w", name, c.Name, err)
		}
		out = append(out, Manifest{Name: name, YAML: buf.Bytes()})
	}
	return out, nil
}
