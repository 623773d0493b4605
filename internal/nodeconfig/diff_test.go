package nodeconfig

import (
	"reflect"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
)

// TestDiffRenewal renews one certificate at a time with the real PKI and
// checks that exactly the files holding it change and exactly the units
// reading them restart.
func TestDiffRenewal(t *testing.T) {
	cases := []struct {
		renew   string
		files   map[string]string // node -> changed file paths, space separated
		restart map[string]string // node -> units, space separated
	}{
		{pki.APIServer, map[string]string{"cp1": "/etc/kubernetes/pki/apiserver.crt"}, map[string]string{"cp1": "kube-apiserver.service"}},
		{pki.EtcdServer("cp1"), map[string]string{"cp1": "/etc/kubernetes/pki/etcd/server-cp1.crt"}, map[string]string{"cp1": "etcd.service"}},
		{pki.ControllerManager, map[string]string{"cp1": "/etc/kubernetes/controller-manager.kubeconfig"}, map[string]string{"cp1": "kube-controller-manager.service"}},
		{pki.KubeletServing("w1"), map[string]string{"w1": "/etc/kubernetes/pki/kubelet-serving-w1.crt"}, map[string]string{"w1": "kubelet.service"}},
		{pki.KubeletClient("w1"), map[string]string{"w1": "/etc/kubernetes/kubelet.kubeconfig"}, map[string]string{"w1": "kubelet.service"}},
		// kube-proxy's kubeconfig is named in its configuration file, not on its command line.
		{pki.KubeProxy, map[string]string{"w1": "/etc/kubernetes/kube-proxy.kubeconfig", "w2": "/etc/kubernetes/kube-proxy.kubeconfig"},
			map[string]string{"w1": "kube-proxy.service", "w2": "kube-proxy.service"}},
	}
	for _, tc := range cases {
		t.Run(tc.renew, func(t *testing.T) {
			p := planFor(t, labSpec("routes", "", defaultNodes...))
			dir := t.TempDir()
			creds := func(renew map[string]bool) func(plan.Cluster) Credentials {
				return func(c plan.Cluster) Credentials {
					cl, _, err := pki.Ensure(dir, p.Lab, c, p.Network, pki.Options{Renew: renew})
					if err != nil {
						t.Fatal(err)
					}
					return cl
				}
			}
			before := buildAll(t, p, creds(nil))
			after := buildAll(t, p, creds(map[string]bool{tc.renew: true}))
			for name := range before {
				ch := Diff(before[name], after[name])
				var files []string
				for _, f := range ch.Files {
					files = append(files, f.Path)
				}
				if got := strings.Join(files, " "); got != tc.files[name] {
					t.Errorf("%s: changed files %q, want %q", name, got, tc.files[name])
				}
				if got := strings.Join(ch.Restart, " "); got != tc.restart[name] {
					t.Errorf("%s: restart %q, want %q", name, got, tc.restart[name])
				}
				if len(ch.Units) != 0 {
					t.Errorf("%s: unit files changed by a renewal: %v", name, ch.Units)
				}
				// Asking the node (hashes of what it holds) gives the same answer.
				have := map[string]FileState{}
				for _, f := range before[name].Files {
					have[f.Path] = StateOf(f.Path, f.Mode, f.Owner, f.Group, f.Contents)
				}
				for _, u := range before[name].Units {
					have[UnitPath(u)] = StateOf(UnitPath(u), 0o644, "root", "root", []byte(u.Contents))
				}
				if got := DiffState(have, after[name]); !reflect.DeepEqual(got, ch) {
					t.Errorf("%s: DiffState %+v\nDiff %+v", name, got, ch)
				}
				// A node that holds nothing gets everything and restarts every unit.
				if got := DiffState(nil, after[name]); len(got.Files) != len(after[name].Files) || len(got.Restart) != len(after[name].Units) {
					t.Errorf("%s: empty node: %d files, %d restarts", name, len(got.Files), len(got.Restart))
				}
			}
		})
	}
}

func TestDiffUnitsAndMentions(t *testing.T) {
	old := Node{
		Files: []File{{Path: "/etc/a.conf", Contents: []byte("x")}, {Path: "/etc/a.conf.d", Contents: []byte("y")}},
		Units: []Unit{{Name: "a.service", Contents: "ExecStart=/bin/a --config=/etc/a.conf.d"}, {Name: "b.service", Contents: "ExecStart=/bin/b"}},
	}
	new := old
	new.Files = []File{{Path: "/etc/a.conf", Contents: []byte("changed")}, {Path: "/etc/a.conf.d", Contents: []byte("y")}}
	new.Units = []Unit{old.Units[0], {Name: "b.service", DropIn: "10-x.conf", Contents: "[Service]\n"}}
	ch := Diff(old, new)
	if len(ch.Files) != 1 || ch.Files[0].Path != "/etc/a.conf" {
		t.Errorf("files %v", ch.Files)
	}
	// a.service names /etc/a.conf.d, not /etc/a.conf: no restart for it.
	if strings.Join(ch.Restart, " ") != "b.service" {
		t.Errorf("restart %v, want b.service (its new drop-in)", ch.Restart)
	}
	if len(ch.Units) != 1 || UnitPath(ch.Units[0]) != "/etc/systemd/system/b.service.d/10-x.conf" {
		t.Errorf("units %v", ch.Units)
	}
	if !Diff(old, old).Empty() {
		t.Error("a node differs from itself")
	}
}
