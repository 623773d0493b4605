package nodeconfig

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

var (
	defaultNodes = []string{"cp1:control-plane,etcd", "w1:worker", "w2:worker"}
	xenNodes     = []string{"master:control-plane", "etcd1:etcd", "etcd2:etcd", "etcd3:etcd", "node1:worker", "node2:worker"}
	soloNodes    = []string{"solo:control-plane,etcd,worker"}
	haNodes      = []string{"cp1:control-plane,etcd", "cp2:control-plane,etcd", "cp3:control-plane,etcd", "w1:worker"}
)

func TestBuildRoles(t *testing.T) {
	cpUnits := []string{"kube-apiserver.service", "kube-controller-manager.service", "kube-scheduler.service"}
	workerUnits := []string{"containerd.service", "kubelet.service", "kube-proxy.service"}
	cpFiles := []string{"/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key", "/etc/kubernetes/pki/ca-signer.key",
		"/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/sa.pub", "/etc/kubernetes/pki/etcd/apiserver-client.key",
		"/etc/kubernetes/pki/front-proxy-client.key", "/etc/kubernetes/pki/apiserver-kubelet-client.key",
		"/etc/kubernetes/controller-manager.kubeconfig", "/etc/kubernetes/scheduler.kubeconfig"}
	workerFiles := []string{ContainerdConf, KubeletConfig, KubeProxyConf, "/etc/kubernetes/kubelet.kubeconfig",
		"/etc/kubernetes/kube-proxy.kubeconfig", "/etc/kubernetes/pki/ca.crt"}
	never := []string{"/etc/kubernetes/admin.kubeconfig", "/etc/kubernetes/super-admin.kubeconfig",
		"/etc/kubernetes/pki/admin.key", "/etc/kubernetes/pki/super-admin.key", "/etc/kubernetes/pki/etcd/ca.key",
		"/etc/kubernetes/pki/front-proxy-ca.key", "/etc/kubernetes/pki/apps-ca.key", "/etc/kubernetes/pki/ca.key"}

	cases := []struct {
		name       string
		podNet     string
		family     string
		nodes      []string
		node       string
		enable     []string
		files      []string
		absent     []string
		routes     int // static routes on eth0
		addresses  int
		apiserver  bool
		etcdMember bool
	}{
		{name: "default/cp1 routes", podNet: "routes", nodes: defaultNodes, node: "cp1",
			enable:    append([]string{"etcd.service"}, cpUnits...),
			files:     append(append([]string{"/etc/kubernetes/pki/etcd/server-cp1.key", "/etc/kubernetes/pki/etcd/peer-cp1.key", "/etc/kubernetes/pki/etcd/ca.crt"}, cpFiles...), HostsFile),
			absent:    append([]string{CNIConfFile, ContainerdConf, "/etc/kubernetes/pki/etcd/flannel-client.key"}, never...),
			routes:    2, // to w1's and w2's pod CIDRs
			addresses: 1, apiserver: true, etcdMember: true},
		{name: "default/w1 routes", podNet: "routes", nodes: defaultNodes, node: "w1",
			enable:    workerUnits,
			files:     append([]string{CNIConfFile, "/etc/kubernetes/pki/kubelet-serving-w1.key", "/etc/crictl.yaml"}, workerFiles...),
			absent:    append([]string{"/etc/kubernetes/pki/ca-signer.key", "/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/etcd/ca.crt", "/etc/kubernetes/pki/kubelet-serving-w2.key"}, never...),
			routes:    1, // to w2 only
			addresses: 1},
		{name: "default/cp1 flannel", podNet: "flannel", nodes: defaultNodes, node: "cp1",
			enable:    append(append([]string{"etcd.service"}, cpUnits...), "kubelab-flannel-config.service", "flanneld.service"),
			files:     append([]string{"/etc/kubernetes/pki/etcd/flannel-client.key", ScriptDir + "/flannel-config"}, cpFiles...),
			absent:    append([]string{CNIConfFile, ScriptDir + "/flannel-cni"}, never...),
			addresses: 1, apiserver: true, etcdMember: true},
		{name: "default/w2 flannel", podNet: "flannel", nodes: defaultNodes, node: "w2",
			enable:    append(append([]string{}, workerUnits...), "flanneld.service", "kubelab-flannel-cni.service"),
			files:     append([]string{"/etc/kubernetes/pki/etcd/flannel-client.key", "/etc/kubernetes/pki/etcd/ca.crt", ScriptDir + "/flannel-cni"}, workerFiles...),
			absent:    append([]string{CNIConfFile, ScriptDir + "/flannel-config", "/etc/kubernetes/pki/etcd/apiserver-client.key"}, never...),
			addresses: 1},
		{name: "xen-guide/master routes", podNet: "routes", nodes: xenNodes, node: "master",
			enable: cpUnits, files: cpFiles,
			absent: append([]string{"/etc/kubernetes/pki/etcd/server-etcd1.key", "/etc/kubernetes/pki/etcd/peer-master.key"}, never...),
			routes: 2, addresses: 1, apiserver: true},
		{name: "xen-guide/etcd2 routes", podNet: "routes", nodes: xenNodes, node: "etcd2",
			enable: []string{"etcd.service"},
			files:  []string{"/etc/kubernetes/pki/etcd/server-etcd2.key", "/etc/kubernetes/pki/etcd/peer-etcd2.crt"},
			absent: append([]string{"/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/etcd/apiserver-client.key", "/etc/kubernetes/pki/etcd/server-etcd1.key"}, never...),
			routes: 0, addresses: 1, etcdMember: true},
		{name: "xen-guide/etcd1 flannel stores the network config", podNet: "flannel", nodes: xenNodes, node: "etcd1",
			enable: []string{"etcd.service", "kubelab-flannel-config.service"},
			files:  []string{ScriptDir + "/flannel-config", "/etc/kubernetes/pki/etcd/flannel-client.key"},
			absent: append([]string{"/etc/kubernetes/pki/etcd/apiserver-client.key"}, never...),
			routes: 0, addresses: 1, etcdMember: true},
		{name: "xen-guide/etcd3 flannel", podNet: "flannel", nodes: xenNodes, node: "etcd3",
			enable: []string{"etcd.service"},
			absent: append([]string{ScriptDir + "/flannel-config", "/etc/kubernetes/pki/etcd/flannel-client.key"}, never...),
			routes: 0, addresses: 1, etcdMember: true},
		{name: "xen-guide/master flannel", podNet: "flannel", nodes: xenNodes, node: "master",
			enable: append(append([]string{}, cpUnits...), "flanneld.service"), files: cpFiles,
			absent: append([]string{ScriptDir + "/flannel-config", CNIConfFile}, never...),
			routes: 0, addresses: 1, apiserver: true},
		{name: "solo all roles routes", podNet: "routes", nodes: soloNodes, node: "solo",
			enable:    append(append([]string{"etcd.service"}, cpUnits...), workerUnits...),
			files:     append(append([]string{CNIConfFile}, cpFiles...), workerFiles...),
			absent:    never,
			routes:    0,
			addresses: 1, apiserver: true, etcdMember: true},
		{name: "ha/cp2 routes", podNet: "routes", nodes: haNodes, node: "cp2",
			enable: append(append([]string{"etcd.service"}, cpUnits...), "keepalived.service"),
			files:  append([]string{KeepalivedConfig}, cpFiles...), absent: never,
			routes: 1, addresses: 1, apiserver: true, etcdMember: true},
		{name: "ha/w1 routes", podNet: "routes", nodes: haNodes, node: "w1",
			enable: workerUnits, files: workerFiles, absent: append([]string{KeepalivedConfig}, never...),
			routes: 0, addresses: 1},
		{name: "dual-stack/w1 routes", podNet: "routes", family: "dual", nodes: defaultNodes, node: "w1",
			enable: workerUnits, files: workerFiles, absent: never,
			routes: 2, addresses: 2},
		{name: "dual-stack/cp1 routes", podNet: "routes", family: "dual", nodes: defaultNodes, node: "cp1",
			enable: append([]string{"etcd.service"}, cpUnits...), files: cpFiles, absent: never,
			routes: 4, addresses: 2, apiserver: true, etcdMember: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := planFor(t, labSpec(tc.podNet, tc.family, tc.nodes...))
			c := p.Clusters[0]
			nodes := buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() })
			n, ok := nodes[tc.node]
			if !ok {
				t.Fatalf("no node %s", tc.node)
			}
			if !slices.Equal(n.Enable, tc.enable) {
				t.Errorf("Enable = %q\nwant     %q", n.Enable, tc.enable)
			}
			// Every enabled unit is defined, and every defined unit enabled.
			var defined []string
			for _, u := range n.Units {
				if u.DropIn == "" {
					defined = append(defined, u.Name)
				}
			}
			slices.Sort(defined)
			want := slices.Clone(tc.enable)
			slices.Sort(want)
			if !slices.Equal(defined, want) {
				t.Errorf("units defined %q, enabled %q", defined, want)
			}
			for _, path := range tc.files {
				if _, ok := fileByPath(n, path); !ok {
					t.Errorf("missing file %s", path)
				}
			}
			for _, path := range tc.absent {
				if _, ok := fileByPath(n, path); ok {
					t.Errorf("unexpected file %s", path)
				}
			}
			if got := len(n.Network.Routes); got != tc.routes {
				t.Errorf("%d routes, want %d: %v", got, tc.routes, n.Network.Routes)
			}
			if tc.podNet == spec.PodNetworkRoutes {
				checkRoutes(t, c, n)
			}
			if got := len(n.Network.Addresses); got != tc.addresses {
				t.Errorf("%d addresses, want %d: %v", got, tc.addresses, n.Network.Addresses)
			}
			if n.Network.Gateway != p.Network.Gateway || !slices.Equal(n.Network.DNS, []netip.Addr{p.Network.Gateway}) {
				t.Errorf("gateway %s dns %v, want %s", n.Network.Gateway, n.Network.DNS, p.Network.Gateway)
			}
			nw := string(n.NetworkdFiles()[0].Contents)
			for _, want := range []string{"MACAddress=" + n.Network.MAC, "IPv6AcceptRA=no", "Gateway=" + p.Network.Gateway.String()} {
				if !strings.Contains(nw, want) {
					t.Errorf("networkd file lacks %q:\n%s", want, nw)
				}
			}
			if strings.Count(nw, "[Route]") != tc.routes {
				t.Errorf("networkd file has %d routes, want %d", strings.Count(nw, "[Route]"), tc.routes)
			}
			if tc.apiserver {
				checkAPIServer(t, c, n)
			}
			if tc.etcdMember {
				checkEtcd(t, c, n)
			}
			checkHosts(t, c, n)
		})
	}
}

// checkRoutes: a route to every other worker's pod CIDR via that worker,
// none to the node's own, and only on nodes in the pod network.
func checkRoutes(t *testing.T, c plan.Cluster, n Node) {
	t.Helper()
	var me plan.Node
	for _, pn := range c.Nodes {
		if pn.Name == n.Name {
			me = pn
		}
	}
	if !runsPods(me) {
		return
	}
	for _, w := range c.NodesWithRole(spec.RoleWorker) {
		r := Route{To: w.PodCIDR, Via: w.Address}
		has := slices.Contains(n.Network.Routes, r)
		if w.Name == n.Name && has {
			t.Errorf("route to own pod CIDR %v", r)
		}
		if w.Name != n.Name && !has {
			t.Errorf("no route %v to worker %s", r, w.Name)
		}
	}
}

func checkAPIServer(t *testing.T, c plan.Cluster, n Node) {
	t.Helper()
	u, ok := unitByName(n, "kube-apiserver.service")
	if !ok {
		t.Fatal("no kube-apiserver.service")
	}
	var urls []string
	for _, m := range c.NodesWithRole(spec.RoleEtcd) {
		urls = append(urls, "https://"+m.Address.String()+":2379")
	}
	for _, want := range []string{
		"--service-node-port-range=31000-31999",
		"--etcd-servers=" + strings.Join(urls, ","),
		"--authorization-mode=Node,RBAC",
		"--anonymous-auth=false",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt",
		"--service-cluster-ip-range=" + serviceCIDRs(c),
		"--advertise-address=" + n.Network.Addresses[0].Addr().String(),
	} {
		if !strings.Contains(u.Contents, want+" \\\n") && !strings.HasSuffix(strings.TrimSpace(u.Contents), want) && !strings.Contains(u.Contents, want+"\n") {
			t.Errorf("kube-apiserver lacks flag %s", want)
		}
	}
	cm, _ := unitByName(n, "kube-controller-manager.service")
	for _, want := range []string{"--allocate-node-cidrs=false", "--use-service-account-credentials=true", "--cluster-signing-key-file=/etc/kubernetes/pki/ca-signer.key"} {
		if !strings.Contains(cm.Contents, want) {
			t.Errorf("kube-controller-manager lacks %s", want)
		}
	}
}

func checkEtcd(t *testing.T, c plan.Cluster, n Node) {
	t.Helper()
	u, ok := unitByName(n, "etcd.service")
	if !ok {
		t.Fatal("no etcd.service")
	}
	var initial []string
	for _, m := range c.NodesWithRole(spec.RoleEtcd) {
		initial = append(initial, m.Name+"=https://"+m.Address.String()+":2380")
	}
	for _, want := range []string{"--initial-cluster=" + strings.Join(initial, ","), "--client-cert-auth=true",
		"--peer-client-cert-auth=true", "--heartbeat-interval=500", "--election-timeout=5000", "--data-dir=/var/lib/etcd",
		"ExecStart=/usr/local/bin/etcd ", "--cert-file=/etc/kubernetes/pki/etcd/server-" + n.Name + ".crt"} {
		if !strings.Contains(u.Contents, want) {
			t.Errorf("etcd unit lacks %s", want)
		}
	}
}

func checkHosts(t *testing.T, c plan.Cluster, n Node) {
	t.Helper()
	f, ok := fileByPath(n, HostsFile)
	if !ok {
		t.Fatal("no /etc/hosts")
	}
	for _, o := range c.Nodes {
		if !strings.Contains(string(f.Contents), o.Address.String()+"\t"+o.Name+"\n") {
			t.Errorf("/etc/hosts lacks %s", o.Name)
		}
	}
}

// TestSecretModes: every private key and kubeconfig is 0600 and marked
// secret, in every topology and mode, and nothing else is secret.
func TestSecretModes(t *testing.T) {
	for _, podNet := range []string{"routes", "flannel"} {
		for _, nodes := range [][]string{defaultNodes, xenNodes, soloNodes} {
			p := planFor(t, labSpec(podNet, "", nodes...))
			for name, n := range buildAll(t, p, realPKI(t, p)) {
				files := append(slices.Clone(n.Files), n.SSHHostKeys...)
				if len(n.SSHHostKeys) != 2 {
					t.Errorf("%s: %d ssh host key files, want 2", name, len(n.SSHHostKeys))
				}
				for _, f := range files {
					private := bytes.Contains(f.Contents, []byte("PRIVATE KEY")) || bytes.Contains(f.Contents, []byte("client-key-data")) ||
						bytes.Contains(f.Contents, []byte("secretbox:"))
					if private != f.Secret {
						t.Errorf("%s %s: holds a private key %v, marked secret %v", name, f.Path, private, f.Secret)
					}
					if private && f.Mode != 0o600 {
						t.Errorf("%s %s: private key with mode %o, want 600", name, f.Path, f.Mode)
					}
					if !private && f.Mode&0o077 == 0 {
						t.Errorf("%s %s: public file with mode %o", name, f.Path, f.Mode)
					}
				}
			}
		}
	}
}

// TestNoForeignKeys: across a cluster built with the real PKI, a node holds
// its own per-node keys and never another node's, in any encoding.
func TestNoForeignKeys(t *testing.T) {
	for _, tc := range []struct {
		podNet string
		nodes  []string
	}{
		{"routes", defaultNodes},
		{"flannel", []string{"a:control-plane,etcd,worker", "b:etcd,worker", "c:etcd,worker"}},
		{"routes", xenNodes},
	} {
		p := planFor(t, labSpec(tc.podNet, "", tc.nodes...))
		c := p.Clusters[0]
		var creds *pki.Cluster
		built := buildAll(t, p, func(pc plan.Cluster) Credentials {
			creds = realPKI(t, p)(pc).(*pki.Cluster)
			return creds
		})
		perNode := func(n plan.Node) (keys [][]byte) {
			for _, name := range []string{pki.EtcdServer(n.Name), pki.EtcdPeer(n.Name), pki.KubeletClient(n.Name), pki.KubeletServing(n.Name)} {
				if _, key, err := creds.PEM(name); err == nil {
					keys = append(keys, key)
				}
			}
			keys = append(keys, built[n.Name].SSHHostKeys[0].Contents)
			return keys
		}
		total := 0
		for _, owner := range c.Nodes {
			keys := perNode(owner)
			total += len(keys)
			for _, holder := range c.Nodes {
				for i, key := range keys {
					found := holds(built[holder.Name], key)
					if holder.Name == owner.Name && !found {
						t.Errorf("%s lacks its own key #%d", owner.Name, i)
					}
					if holder.Name != owner.Name && found {
						t.Errorf("%s holds key #%d of %s", holder.Name, i, owner.Name)
					}
				}
			}
		}
		// Each node has its ssh host key; PKI keys must come on top, or the
		// test would prove little.
		if total < 2*len(c.Nodes) {
			t.Errorf("only %d per-node keys in %d nodes", total, len(c.Nodes))
		}
	}
}

// holds reports whether any file of n contains key, raw or base64.
func holds(n Node, key []byte) bool {
	b64 := []byte(base64.StdEncoding.EncodeToString(key))
	for _, f := range append(slices.Clone(n.Files), n.SSHHostKeys...) {
		if bytes.Contains(f.Contents, key) || bytes.Contains(f.Contents, b64) {
			return true
		}
	}
	return false
}

// TestHeaders: every generated text file says it was made by kubelab and
// from what; JSON, PEM and the hostname cannot carry comments.
func TestHeaders(t *testing.T) {
	p := planFor(t, labSpec("flannel", "dual", soloNodes...))
	for _, n := range buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() }) {
		const want = "# Generated by kubelab from lab.yaml"
		files := append(append(slices.Clone(n.Files), n.NetworkdFiles()...), n.SysctlFile(), n.ModulesFile())
		for _, f := range files {
			c := string(f.Contents)
			if strings.HasPrefix(c, "-----BEGIN") || strings.HasPrefix(c, "{") {
				continue
			}
			if strings.HasPrefix(c, "#!") {
				_, c, _ = strings.Cut(c, "\n")
			}
			if !strings.HasPrefix(c, want) {
				t.Errorf("%s does not start with the kubelab header:\n%.200s", f.Path, c)
			}
		}
		for _, u := range n.Units {
			if !strings.HasPrefix(u.Contents, want) {
				t.Errorf("unit %s does not start with the kubelab header", u.Name)
			}
		}
	}
}

func TestBuildErrors(t *testing.T) {
	p := planFor(t, labSpec("routes", "", defaultNodes...))
	c := p.Clusters[0]
	base := Input{Plan: p, Cluster: c, Node: c.Nodes[0], Creds: newFakeCreds(), Versions: versions.Default()}
	cases := []struct {
		name string
		mod  func(in *Input)
		want string
	}{
		{"no plan", func(in *Input) { in.Plan = nil }, "no plan"},
		{"no creds", func(in *Input) { in.Creds = nil }, "no credentials"},
		{"no roles", func(in *Input) { in.Node.Roles = nil }, "no roles"},
		{"unknown role", func(in *Input) { in.Node.Roles = []string{"master"} }, `unknown role "master"`},
		{"unknown pod network", func(in *Input) { in.Cluster.PodNetwork = "calico" }, `unknown pod network "calico"`},
		{"control plane without etcd", func(in *Input) {
			in.Cluster.Nodes = []plan.Node{in.Node}
			in.Cluster.Nodes[0].Roles = []string{spec.RoleControlPlane}
			in.Node = in.Cluster.Nodes[0]
		}, "no etcd member"},
		{"missing credential", func(in *Input) {
			f := newFakeCreds()
			f.denied[pki.APIServer] = true
			in.Creds = f
		}, "credential apiserver"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Cluster.Nodes = slices.Clone(c.Nodes)
			tc.mod(&in)
			_, err := Build(in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestNetworkdDHCP: with the lab's DHCP server the node takes its IPv4
// address and gateway from DHCP; IPv6, DNS and routes stay static.
func TestNetworkdDHCP(t *testing.T) {
	base := Network{
		Interface: "eth0", MAC: "00:16:3e:4e:31:0a",
		Addresses: []netip.Prefix{netip.MustParsePrefix("192.168.100.10/24"), netip.MustParsePrefix("fd00::a/64")},
		Gateway:   netip.MustParseAddr("192.168.100.1"), Gateway6: netip.MustParseAddr("fd00::1"),
		DNS:    []netip.Addr{netip.MustParseAddr("192.168.100.1")},
		Routes: []Route{{To: netip.MustParsePrefix("172.16.11.0/24"), Via: netip.MustParseAddr("192.168.100.11")}},
	}
	for _, tc := range []struct {
		dhcp          bool
		want, notWant []string
	}{
		{false, []string{"Address=192.168.100.10/24", "Gateway=192.168.100.1\n", "Address=fd00::a/64", "DNS=192.168.100.1", "Destination=172.16.11.0/24"},
			[]string{"DHCP=", "[DHCPv4]"}},
		{true, []string{"DHCP=ipv4\n", "KeepConfiguration=dhcp", "UseDNS=no", "Address=fd00::a/64", "Gateway=fd00::1", "DNS=192.168.100.1", "Destination=172.16.11.0/24"},
			[]string{"Address=192.168.100.10/24", "Gateway=192.168.100.1\n"}},
	} {
		nw := base
		nw.DHCP4 = tc.dhcp
		got := string(Node{Name: "cp1", Network: nw}.NetworkdFiles()[0].Contents)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("dhcp=%v: networkd file lacks %q:\n%s", tc.dhcp, w, got)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(got, w) {
				t.Errorf("dhcp=%v: networkd file has %q:\n%s", tc.dhcp, w, got)
			}
		}
	}
}
