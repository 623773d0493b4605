package lab

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/render/cloudinit"
	"github.com/kubelab/kubelab/internal/render/ignition"
	"github.com/kubelab/kubelab/internal/render/overlay"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/sshkeys"
	"github.com/kubelab/kubelab/internal/versions"
)

// RenderInput is what rendering a lab needs: the validated spec and its plan.
type RenderInput struct {
	Layout   Layout
	Lab      *spec.Lab
	Plan     *plan.Plan
	Versions versions.Set
	// AllFormats renders every provisioning format for every node instead
	// of only the node's own (for reading and comparing them).
	AllFormats bool
	// Clusters limits rendering to these clusters; empty means all.
	Clusters []string
	// Renew names leaf certificates of the rendered clusters to re-issue
	// (kubelab certs renew); NewKeys gives them new keys.
	Renew   map[string]bool
	NewKeys bool
}

// RenderResult says what rendering wrote.
type RenderResult struct {
	PKI   []pki.Report
	Nodes []RenderedNode
}

// RenderedNode is one node's rendered configuration.
type RenderedNode struct {
	Cluster, Node string
	Formats       map[string]string // provisioning format -> path written
	Config        nodeconfig.Node   `json:"-"`
}

// Render makes every key, certificate and node configuration of the lab
// and writes them into the lab directory. It reuses what exists (keys are
// never rotated), so it is safe to run again at any time.
func Render(in RenderInput) (RenderResult, error) {
	var res RenderResult
	labKey, err := sshkeys.Ensure(in.Layout.SSHKey(), "kubelab-"+in.Lab.Name)
	if err != nil {
		return res, fmt.Errorf("lab ssh key: %w", err)
	}
	authorized := []string{strings.TrimSpace(string(labKey.Public))}
	for i, k := range in.Lab.SSHKeys {
		data, err := os.ReadFile(spec.ResolvePath(filepath.Dir(in.Layout.Spec()), k))
		if err != nil {
			return res, fmt.Errorf("sshKeys[%d]: %w", i, err)
		}
		authorized = append(authorized, strings.TrimSpace(string(data)))
	}
	// Clusters are independent (own PKI, own nodes): render them in parallel.
	results := make([]clusterRender, len(in.Plan.Clusters))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, c := range in.Plan.Clusters {
		g.Go(func() error {
			var err error
			results[i], err = renderCluster(in, c, authorized, selected(in.Clusters, c.Name))
			if err != nil {
				return fmt.Errorf("cluster %s: %w", c.Name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	var known bytes.Buffer
	for _, r := range results {
		if r.rendered {
			res.PKI = append(res.PKI, r.pki)
			res.Nodes = append(res.Nodes, r.nodes...)
		}
		known.WriteString(r.knownHosts)
	}
	if err := os.WriteFile(in.Layout.KnownHosts(), known.Bytes(), 0o644); err != nil {
		return res, fmt.Errorf("write known_hosts: %w", err)
	}
	return res, nil
}

type clusterRender struct {
	rendered   bool
	pki        pki.Report
	nodes      []RenderedNode
	knownHosts string
}

// renderCluster renders one cluster; when render is false it only makes
// sure its nodes' host keys exist, so known_hosts always pins every node.
func renderCluster(in RenderInput, c plan.Cluster, authorized []string, render bool) (clusterRender, error) {
	out := clusterRender{rendered: render}
	var creds *pki.Cluster
	var snippets []ignition.Snippet
	if render {
		opts, err := pkiOptions(in.Lab, c)
		if err != nil {
			return out, err
		}
		opts.Renew, opts.NewKeys = in.Renew, in.NewKeys
		creds, out.pki, err = pki.Ensure(in.Layout.Dir, in.Lab.Name, c, in.Plan.Network, opts)
		if err != nil {
			return out, fmt.Errorf("pki: %w", err)
		}
		if snippets, err = loadButane(c.Butane); err != nil {
			return out, err
		}
	}
	var known strings.Builder
	for _, n := range c.Nodes {
		hostKey, err := sshkeys.Ensure(in.Layout.HostKey(c.Name, n.Name), "root@"+n.Name)
		if err != nil {
			return out, fmt.Errorf("node %s: ssh host key: %w", n.Name, err)
		}
		line, err := sshkeys.KnownHostsLine(hostKey.Public, n.Address.String()+":22", fmt.Sprintf("127.0.0.1:%d", n.SSHHostPort))
		if err != nil {
			return out, fmt.Errorf("node %s: %w", n.Name, err)
		}
		known.WriteString(line + "\n")
		if !render {
			continue
		}
		rn, err := renderNode(in, c, n, creds, authorized, snippets, hostKey)
		if err != nil {
			return out, fmt.Errorf("render node %s: %w", n.Name, err)
		}
		out.nodes = append(out.nodes, rn)
	}
	out.knownHosts = known.String()
	if render {
		if err := writeAddons(in, c); err != nil {
			return out, fmt.Errorf("add-ons: %w", err)
		}
	}
	return out, nil
}

func renderNode(in RenderInput, c plan.Cluster, n plan.Node, creds *pki.Cluster, authorized []string, snippets []ignition.Snippet, hostKey sshkeys.Pair) (RenderedNode, error) {
	dir := in.Layout.Node(c.Name, n.Name)
	cfg, err := nodeconfig.Build(nodeconfig.Input{
		Plan:              in.Plan,
		Cluster:           c,
		Node:              n,
		Creds:             creds,
		Versions:          in.Versions,
		SSHAuthorizedKeys: authorized,
		SSHHostKey:        nodeconfig.SSHHostKey{Type: "ed25519", Private: hostKey.Private, Public: hostKey.Public},
		Source:            in.Layout.Spec(),
	})
	if err != nil {
		return RenderedNode{}, err
	}
	formats := []string{n.Provisioning}
	if in.AllFormats {
		formats = []string{spec.ProvisionOverlay, spec.ProvisionCloudInit, spec.ProvisionIgnition}
	}
	rn := RenderedNode{Cluster: c.Name, Node: n.Name, Formats: map[string]string{}, Config: cfg}
	for _, f := range formats {
		var path string
		switch f {
		case spec.ProvisionIgnition:
			path, err = ignition.Write(dir, cfg, snippets)
		case spec.ProvisionCloudInit:
			path = filepath.Join(dir, CloudInitDir)
			_, err = cloudinit.Write(path, cfg)
		case spec.ProvisionOverlay:
			path, err = overlay.Write(dir, cfg)
		default:
			err = fmt.Errorf("unknown provisioning %q", f)
		}
		if err != nil {
			return RenderedNode{}, fmt.Errorf("%s: %w", f, err)
		}
		rn.Formats[f] = path
	}
	return rn, nil
}

func loadButane(paths []string) ([]ignition.Snippet, error) {
	var out []ignition.Snippet
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read Butane snippet: %w", err)
		}
		out = append(out, ignition.Snippet{Name: p, Data: data, FilesDir: filepath.Dir(p)})
	}
	return out, nil
}

func writeAddons(in RenderInput, c plan.Cluster) error {
	manifests, err := nodeconfig.Addons(in.Plan, c, in.Versions)
	if err != nil {
		return err
	}
	dir := in.Layout.Addons(c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, m := range manifests {
		p := filepath.Join(dir, fmt.Sprintf("%02d-%s", i+1, strings.TrimSuffix(m.Name, ".yaml")+".yaml"))
		if err := os.WriteFile(p, m.YAML, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func selected(only []string, name string) bool {
	if len(only) == 0 {
		return true
	}
	for _, o := range only {
		if o == name {
			return true
		}
	}
	return false
}

// Summary prints one line per cluster and node of a render result.
func (r RenderResult) Summary(w io.Writer) {
	for _, rep := range r.PKI {
		fmt.Fprintf(w, "cluster %s: %d credential changes\n", rep.Cluster, len(rep.Changes))
	}
	for _, n := range r.Nodes {
		formats := make([]string, 0, len(n.Formats))
		for f := range n.Formats {
			formats = append(formats, f)
		}
		sort.Strings(formats)
		for _, f := range formats {
			fmt.Fprintf(w, "  %s/%s %s -> %s\n", n.Cluster, n.Node, f, n.Formats[f])
		}
	}
}
