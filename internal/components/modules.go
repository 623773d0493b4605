package components

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// moduleSource builds every part from upstream source through Go modules,
// each in its own scratch module that requires the upstream module at the
// pinned version.
type moduleSource struct{ gb *goBuilder }

func (s *moduleSource) id(part) string { return "modules" }

func (s *moduleSource) fetch(ctx context.Context, p part, dir string) error {
	switch p.name {
	case "kubernetes":
		return s.kubernetes(ctx, p.version, dir)
	case "etcd":
		// server and etcdctl are separate modules with separate graphs.
		if err := s.simple(ctx, dir, "etcd-server", "go.etcd.io/etcd/server/v3", p.version, false, "", "-s -w",
			target{"go.etcd.io/etcd/server/v3", "bin/etcd"}); err != nil {
			return err
		}
		return s.simple(ctx, dir, "etcdctl", "go.etcd.io/etcd/etcdctl/v3", p.version, false, "", "-s -w",
			target{"go.etcd.io/etcd/etcdctl/v3", "bin/etcdctl"})
	case "cni":
		const mod = "github.com/containernetworking/plugins"
		var ts []target
		for _, pl := range cniPlugins {
			ts = append(ts, target{mod + "/" + pl, filepath.Join(CNIDir, filepath.Base(pl))})
		}
		return s.simple(ctx, dir, "cni-plugins", mod, p.version, false, "", "-s -w -X "+mod+"/pkg/utils/buildversion.BuildVersion="+p.version, ts...)
	case "containerd":
		const mod = "github.com/containerd/containerd/v2"
		// The tags of containerd's static release build.
		return s.simple(ctx, dir, "containerd", mod, p.version, false, "urfave_cli_no_docs,osusergo,netgo,static_build",
			"-s -w -X "+mod+"/version.Version="+p.version+" -X "+mod+"/version.Package=github.com/containerd/containerd/v2",
			target{mod + "/cmd/containerd", "bin/containerd"},
			target{mod + "/cmd/containerd-shim-runc-v2", "bin/containerd-shim-runc-v2"},
			target{mod + "/cmd/ctr", "bin/ctr"})
	case "runc":
		// runc needs cgo (nsenter) and libseccomp; linked statically so the
		// node image needs no libseccomp.
		return s.simple(ctx, dir, "runc", "github.com/opencontainers/runc", p.version, true, "seccomp,urfave_cli_no_docs,netgo,osusergo",
			"-s -w -X main.version="+trimVersion(p.version)+" -extldflags -static",
			target{"github.com/opencontainers/runc", "bin/runc"})
	case "crictl":
		const mod = "sigs.k8s.io/cri-tools"
		return s.simple(ctx, dir, "crictl", mod, p.version, false, "", "-s -w -X "+mod+"/pkg/version.Version="+p.version,
			target{mod + "/cmd/crictl", "bin/crictl"})
	case "coredns":
		return s.coredns(ctx, p.version, dir)
	case "flannel":
		return s.flannel(ctx, p.version, dir)
	case "ignition":
		// Its command is the module's internal package (go builds a main
		// package there from outside the module). cgo for libblkid. The
		// link-time settings are the ones distributions without SELinux
		// use: no relabelling, and ssh keys written to authorized_keys
		// itself rather than to a fragment directory sshd does not read.
		const mod = "github.com/coreos/ignition/v2"
		return s.simple(ctx, dir, "ignition", mod, p.version, true, "",
			"-s -w -X "+mod+"/internal/version.Raw="+p.version+
				" -X "+mod+"/internal/distro.selinuxRelabel=false"+
				" -X "+mod+"/internal/distro.writeAuthorizedKeysFragment=false",
			target{mod + "/internal", "bin/ignition"})
	}
	return fmt.Errorf("no module recipe for %s", p.name)
}

// simple builds targets from a scratch module that only requires mod.
func (s *moduleSource) simple(ctx context.Context, dir, name, mod, version string, cgo bool, tags, ldflags string, ts ...target) error {
	var imports []string
	for _, t := range ts {
		imports = append(imports, t.pkg)
	}
	modDir, err := s.gb.prepare(ctx, scratch{
		name:     name + "-" + version,
		requires: map[string]string{mod: version},
		imports:  imports,
	})
	if err != nil {
		return err
	}
	return s.gb.build(ctx, modDir, dir, cgo, tags, ldflags, ts)
}

// kubernetes builds the commands of k8s.io/kubernetes. Its go.mod points its
// staging modules (k8s.io/api, ...) at local paths and requires them at
// v0.0.0, so the scratch module replaces each with its published v0.X.Y.
func (s *moduleSource) kubernetes(ctx context.Context, version, dir string) error {
	_, gomod, err := s.gb.moduleDir(ctx, "k8s.io/kubernetes", version)
	if err != nil {
		return err
	}
	staging, err := stagingModules(gomod)
	if err != nil {
		return err
	}
	sv, err := stagingVersion(version)
	if err != nil {
		return err
	}
	repl := map[string]string{}
	for _, m := range staging {
		repl[m] = sv
	}
	var ts []target
	var imports []string
	for _, c := range kubernetesCommands {
		pkg := "k8s.io/kubernetes/cmd/" + c
		ts = append(ts, target{pkg, filepath.Join(BinDir, c)})
		imports = append(imports, pkg)
	}
	modDir, err := s.gb.prepare(ctx, scratch{
		name:     "kubernetes-" + version,
		requires: map[string]string{"k8s.io/kubernetes": version},
		replaces: repl,
		imports:  imports,
	})
	if err != nil {
		return err
	}
	return s.gb.build(ctx, modDir, dir, false, upstreamTags, kubeLdflags(version, false), ts)
}

// stagingModules lists the k8s.io modules kubernetes' go.mod requires at
// v0.0.0 (its staging tree), except the sample projects nothing needs.
func stagingModules(gomod string) ([]string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return nil, fmt.Errorf("read kubernetes go.mod: %w", err)
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(fields) < 2 || fields[1] != "v0.0.0" || !strings.HasPrefix(fields[0], "k8s.io/") ||
			strings.HasPrefix(fields[0], "k8s.io/sample-") || seen[fields[0]] {
			continue
		}
		seen[fields[0]] = true
		out = append(out, fields[0])
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no staging modules found in %s", gomod)
	}
	return out, nil
}

// stagingVersion maps v1.37.2 to v0.37.2, the staging modules' tag.
func stagingVersion(v string) (string, error) {
	if !strings.HasPrefix(v, "v1.") {
		return "", fmt.Errorf("kubernetes version %q is not v1.X.Y", v)
	}
	return "v0." + strings.TrimPrefix(v, "v1."), nil
}

// corednsPlugins is the plugin set kubelab's CoreDNS carries: what
// kubeadm's default Corefile uses plus a few debugging aids. The full set
// pulls ~1.7 GB of cloud SDK modules for nothing a lab needs.
var corednsPlugins = []string{
	"errors", "log", "health", "ready", "kubernetes", "metrics", "forward", "cache",
	"loop", "reload", "loadbalance", "hosts", "rewrite", "template", "whoami", "debug", "bind",
}

func (s *moduleSource) coredns(ctx context.Context, version, dir string) error {
	const mod = "github.com/coredns/coredns"
	var main strings.Builder
	main.WriteString("// Command coredns is CoreDNS with the plugins a kubelab cluster uses.\n// Generated by kubelab.\npackage main\n\nimport (\n")
	fmt.Fprintf(&main, "\t%q\n", mod+"/coremain")
	for _, p := range corednsPlugins {
		fmt.Fprintf(&main, "\t_ %q\n", mod+"/plugin/"+p)
	}
	main.WriteString(")\n\nfunc main() { coremain.Run() }\n")
	modDir, err := s.gb.prepare(ctx, scratch{
		name:     "coredns-" + version,
		requires: map[string]string{mod: version},
		files:    map[string]string{"main.go": main.String()},
	})
	if err != nil {
		return err
	}
	return s.gb.build(ctx, modDir, dir, false, "", "-s -w", []target{{".", "bin/coredns"}})
}

// flannel builds flanneld from its own main package minus the backends whose
// dependencies the proxy refuses (tencentvpc) or that need cgo (udp).
func (s *moduleSource) flannel(ctx context.Context, version, dir string) error {
	const mod = "github.com/flannel-io/flannel"
	src, _, err := s.gb.moduleDir(ctx, mod, version)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(src, "main.go"))
	if err != nil {
		return fmt.Errorf("read flannel main.go: %w", err)
	}
	var out []string
	dropped := 0
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if t == `_ "`+mod+`/pkg/backend/tencentvpc"` || t == `_ "`+mod+`/pkg/backend/udp"` {
			dropped++
			continue
		}
		out = append(out, l)
	}
	if dropped != 2 {
		return fmt.Errorf("flannel %s main.go no longer imports the tencentvpc and udp backends as expected; adjust the recipe", version)
	}
	modDir, err := s.gb.prepare(ctx, scratch{
		name:     "flannel-" + version,
		requires: map[string]string{mod: version},
		files:    map[string]string{"main.go": strings.Join(out, "\n")},
	})
	if err != nil {
		return err
	}
	return s.gb.build(ctx, modDir, dir, false, "", "-s -w -X "+mod+"/pkg/version.Version="+version, []target{{".", "bin/flanneld"}})
}
