package nodeconfig

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/versions"
)

// strictDecode decodes one YAML or JSON document with the real Kubernetes
// types, failing on unknown or duplicate fields.
func strictDecode(t *testing.T, s *runtime.Scheme, doc []byte) runtime.Object {
	t.Helper()
	obj, _, err := serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer().Decode(doc, nil, nil)
	if err != nil {
		t.Fatalf("strict decode: %v\n%s", err, doc)
	}
	return obj
}

func buildOne(t *testing.T, podNet, family string, nodes []string, name string) (*plan.Plan, Node) {
	t.Helper()
	p := planFor(t, labSpec(podNet, family, nodes...))
	built := buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() })
	n, ok := built[name]
	if !ok {
		t.Fatalf("no node %s", name)
	}
	return p, n
}

func TestKubeletConfiguration(t *testing.T) {
	s := runtime.NewScheme()
	if err := kubeletv1beta1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		podNet, family, podCIDR string
	}{
		{"routes", "", "172.16.11.0/24"},
		{"routes", "dual", "172.16.11.0/24,fd6b:6c61:6201:b::/64"},
		{"flannel", "", ""}, // flannel leases the subnet, kubelab does not know it
	} {
		t.Run(tc.podNet+tc.family, func(t *testing.T) {
			p, n := buildOne(t, tc.podNet, tc.family, defaultNodes, "w1")
			f, _ := fileByPath(n, KubeletConfig)
			kc, ok := strictDecode(t, s, f.Contents).(*kubeletv1beta1.KubeletConfiguration)
			if !ok {
				t.Fatalf("not a KubeletConfiguration")
			}
			c := p.Clusters[0]
			if kc.Authentication.Anonymous.Enabled == nil || *kc.Authentication.Anonymous.Enabled {
				t.Error("anonymous authentication not disabled")
			}
			if kc.Authentication.Webhook.Enabled == nil || !*kc.Authentication.Webhook.Enabled {
				t.Error("webhook authentication not enabled")
			}
			if kc.Authentication.X509.ClientCAFile != "/etc/kubernetes/pki/ca.crt" {
				t.Errorf("clientCAFile %q", kc.Authentication.X509.ClientCAFile)
			}
			if kc.Authorization.Mode != kubeletv1beta1.KubeletAuthorizationModeWebhook {
				t.Errorf("authorization mode %q", kc.Authorization.Mode)
			}
			if kc.CgroupDriver != "systemd" || kc.ContainerRuntimeEndpoint != "unix:///run/containerd/containerd.sock" {
				t.Errorf("cgroupDriver %q endpoint %q", kc.CgroupDriver, kc.ContainerRuntimeEndpoint)
			}
			if len(kc.ClusterDNS) != 1 || kc.ClusterDNS[0] != c.DNSServiceIP.String() || kc.ClusterDomain != "cluster.local" {
				t.Errorf("clusterDNS %v domain %q", kc.ClusterDNS, kc.ClusterDomain)
			}
			if kc.PodCIDR != tc.podCIDR {
				t.Errorf("podCIDR %q, want %q", kc.PodCIDR, tc.podCIDR)
			}
			if kc.ResolverConfig == nil {
				t.Fatal("no resolvConf")
			}
			if f, _ := fileByPath(n, *kc.ResolverConfig); !strings.Contains(string(f.Contents), "\nnameserver "+p.Network.Gateway.String()+"\n") {
				t.Errorf("resolvConf %s does not name the lab gateway:\n%s", *kc.ResolverConfig, f.Contents)
			}
			for _, p := range []string{kc.TLSCertFile, kc.TLSPrivateKeyFile, kc.Authentication.X509.ClientCAFile} {
				if _, ok := fileByPath(n, p); !ok {
					t.Errorf("kubelet config names %s, which the node does not have", p)
				}
			}
			u, _ := unitByName(n, "kubelet.service")
			wantIP := "--node-ip=192.168.100.11"
			if tc.family == "dual" {
				wantIP += ",fd6b:6c61:6200::b"
			}
			for _, want := range []string{wantIP + " \\", "--hostname-override=w1", "--kubeconfig=/etc/kubernetes/kubelet.kubeconfig"} {
				if !strings.Contains(u.Contents, want) {
					t.Errorf("kubelet unit lacks %q:\n%s", want, u.Contents)
				}
			}
		})
	}
}

func TestKubeProxyConfiguration(t *testing.T) {
	s := runtime.NewScheme()
	if err := kubeproxyv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, family := range []string{"", "dual"} {
		p, n := buildOne(t, "routes", family, defaultNodes, "w2")
		f, _ := fileByPath(n, KubeProxyConf)
		kp, ok := strictDecode(t, s, f.Contents).(*kubeproxyv1alpha1.KubeProxyConfiguration)
		if !ok {
			t.Fatal("not a KubeProxyConfiguration")
		}
		if kp.Mode != "iptables" || kp.ClusterCIDR != podCIDRs(p.Clusters[0]) || kp.HostnameOverride != "w2" {
			t.Errorf("mode %q clusterCIDR %q hostname %q", kp.Mode, kp.ClusterCIDR, kp.HostnameOverride)
		}
		if _, ok := fileByPath(n, kp.ClientConnection.Kubeconfig); !ok {
			t.Errorf("kube-proxy kubeconfig %s not on the node", kp.ClientConnection.Kubeconfig)
		}
	}
}

func splitYAML(data []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func TestAddons(t *testing.T) {
	for _, family := range []string{"", "dual"} {
		p := planFor(t, labSpec("routes", family, defaultNodes...))
		c := p.Clusters[0]
		ms, err := Addons(p, c, versions.Default())
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 2 || ms[0].Name != "rbac.yaml" || ms[1].Name != "coredns.yaml" {
			t.Fatalf("add-ons %v, want rbac.yaml then coredns.yaml", ms)
		}
		kinds := map[string]runtime.Object{}
		for _, m := range ms {
			if !bytes.HasPrefix(m.YAML, []byte("# Generated by kubelab")) {
				t.Errorf("%s has no kubelab header", m.Name)
			}
			for _, doc := range splitYAML(m.YAML) {
				obj := strictDecode(t, scheme.Scheme, doc)
				gvk := obj.GetObjectKind().GroupVersionKind()
				name := obj.(interface{ GetName() string }).GetName()
				kinds[gvk.Kind+"/"+name] = obj
			}
		}
		admins, ok := kinds["ClusterRoleBinding/"+pki.AdminGroup].(*rbacv1.ClusterRoleBinding)
		if !ok || admins.RoleRef.Name != "cluster-admin" || admins.Subjects[0].Kind != "Group" || admins.Subjects[0].Name != pki.AdminGroup {
			t.Errorf("admin binding wrong: %+v", admins)
		}
		kubelet, ok := kinds["ClusterRoleBinding/kubelab:apiserver-kubelet-client"].(*rbacv1.ClusterRoleBinding)
		if !ok || kubelet.RoleRef.Name != "system:kubelet-api-admin" || kubelet.Subjects[0].Kind != "User" || kubelet.Subjects[0].Name != "kube-apiserver-kubelet-client" {
			t.Errorf("kubelet client binding wrong: %+v", kubelet)
		}
		svc, ok := kinds["Service/kube-dns"].(*corev1.Service)
		if !ok || svc.Namespace != "kube-system" || svc.Spec.ClusterIP != c.DNSServiceIP.String() {
			t.Fatalf("kube-dns service wrong: %+v", svc)
		}
		var ports []string
		for _, sp := range svc.Spec.Ports {
			ports = append(ports, string(sp.Protocol)+"/"+sp.TargetPort.String()+"/"+string(rune('0'+sp.Port/10))+string(rune('0'+sp.Port%10)))
		}
		if !strings.Contains(strings.Join(ports, " "), "UDP/0/53") || !strings.Contains(strings.Join(ports, " "), "TCP/0/53") {
			t.Errorf("kube-dns ports %v lack 53/udp and 53/tcp", ports)
		}
		if (family == "dual") != (svc.Spec.IPFamilyPolicy != nil) {
			t.Errorf("ipFamilyPolicy %v for family %q", svc.Spec.IPFamilyPolicy, family)
		}
		d, ok := kinds["Deployment/coredns"].(*appsv1.Deployment)
		if !ok {
			t.Fatal("no coredns Deployment")
		}
		ct := d.Spec.Template.Spec.Containers[0]
		if ct.Image != versions.Default().CoreDNSImage() || ct.ImagePullPolicy == corev1.PullAlways {
			t.Errorf("coredns image %s pull %s", ct.Image, ct.ImagePullPolicy)
		}
		if ct.ReadinessProbe == nil || ct.ReadinessProbe.HTTPGet.Path != "/ready" || ct.ReadinessProbe.HTTPGet.Port.IntValue() != 8181 {
			t.Errorf("readiness probe %+v", ct.ReadinessProbe)
		}
		for k, v := range d.Spec.Selector.MatchLabels {
			if d.Spec.Template.Labels[k] != v || svc.Spec.Selector[k] != v {
				t.Errorf("selector %s=%s does not match the pods", k, v)
			}
		}
		cm, ok := kinds["ConfigMap/coredns"].(*corev1.ConfigMap)
		if !ok {
			t.Fatal("no coredns ConfigMap")
		}
		for _, want := range []string{"kubernetes cluster.local in-addr.arpa ip6.arpa", "forward . /etc/resolv.conf", "cache 30", "health", "ready"} {
			if !strings.Contains(cm.Data["Corefile"], want) {
				t.Errorf("Corefile lacks %q", want)
			}
		}
		if _, ok := kinds["ServiceAccount/coredns"]; !ok {
			t.Error("no coredns ServiceAccount")
		}
		if _, ok := kinds["ClusterRole/system:coredns"]; !ok {
			t.Error("no coredns ClusterRole")
		}
	}
}

func TestCNIConflist(t *testing.T) {
	for _, family := range []string{"", "dual"} {
		_, n := buildOne(t, "routes", family, defaultNodes, "w2")
		f, ok := fileByPath(n, CNIConfFile)
		if !ok {
			t.Fatal("no CNI config")
		}
		checkConflist(t, f.Contents, "172.16.12.0/24", family == "dual")
	}
}

func checkConflist(t *testing.T, data []byte, subnet string, dual bool) map[string]any {
	t.Helper()
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("CNI conflist: %v\n%s", err, data)
	}
	if list.Name != "kubelab" || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "bridge" || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("unexpected CNI chain %s", data)
	}
	var bridge struct {
		Bridge    string `json:"bridge"`
		IsGateway bool   `json:"isGateway"`
		IPAM      struct {
			Type   string                `json:"type"`
			Ranges [][]map[string]string `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &bridge); err != nil {
		t.Fatal(err)
	}
	if bridge.Bridge != "cni0" || !bridge.IsGateway || bridge.IPAM.Type != "host-local" || bridge.IPAM.Ranges[0][0]["subnet"] != subnet {
		t.Errorf("bridge config %+v, want subnet %s", bridge, subnet)
	}
	if dual != (len(bridge.IPAM.Ranges) == 2) {
		t.Errorf("ranges %v for dual=%v", bridge.IPAM.Ranges, dual)
	}
	var all map[string]any
	_ = json.Unmarshal(list.Plugins[0].Bytes, &all)
	return all
}

// TestFlannelCNIScript runs the generated script against a subnet.env like
// flanneld writes and checks the CNI network it produces.
func TestFlannelCNIScript(t *testing.T) {
	for _, tc := range []struct {
		family, env, subnet, fail string
	}{
		{"", "FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "172.16.5.0/24", ""},
		{"dual", "FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.7.1/24\nFLANNEL_IPV6_NETWORK=fd6b:6c61:6201::/56\nFLANNEL_IPV6_SUBNET=fd6b:6c61:6201:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n", "172.16.7.0/24", ""},
		{"", "FLANNEL_SUBNET=172.16.5.129/25\nFLANNEL_MTU=1450\n", "", "unexpected FLANNEL_SUBNET"},
	} {
		_, n := buildOne(t, "flannel", tc.family, defaultNodes, "w1")
		f, ok := fileByPath(n, ScriptDir+"/flannel-cni")
		if !ok {
			t.Fatal("no flannel-cni script")
		}
		dir := t.TempDir()
		env, out := filepath.Join(dir, "subnet.env"), filepath.Join(dir, "net.d", "10-kubelab.conflist")
		script := strings.NewReplacer("env="+FlannelEnv, "env="+env, "out="+CNIConfFile, "out="+out).Replace(string(f.Contents))
		if script == string(f.Contents) {
			t.Fatal("could not point the script at the test directory")
		}
		if err := os.WriteFile(env, []byte(tc.env), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", script)
		msg, err := cmd.CombinedOutput()
		if tc.fail != "" {
			if err == nil || !strings.Contains(string(msg), tc.fail) {
				t.Errorf("script succeeded or said %q; want failure %q", msg, tc.fail)
			}
			continue
		}
		if err != nil {
			t.Fatalf("flannel-cni script: %v\n%s", err, msg)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		bridge := checkConflist(t, data, tc.subnet, tc.family == "dual")
		if bridge["ipMasq"] != false || bridge["mtu"] == nil {
			t.Errorf("bridge ipMasq %v mtu %v", bridge["ipMasq"], bridge["mtu"])
		}
		if tc.family == "dual" && !bytes.Contains(data, []byte(`"subnet": "fd6b:6c61:6201:7::/64"`)) {
			t.Errorf("no IPv6 range in\n%s", data)
		}
	}
}

// TestFlannelConfigScript runs the one-shot that stores flannel's network
// config with a stand-in etcdctl that fails twice, then records its call.
func TestFlannelConfigScript(t *testing.T) {
	p, n := buildOne(t, "flannel", "", defaultNodes, "cp1")
	f, ok := fileByPath(n, ScriptDir+"/flannel-config")
	if !ok {
		t.Fatal("no flannel-config script")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "etcdctl")
	args := filepath.Join(dir, "args")
	count := filepath.Join(dir, "count")
	if err := os.WriteFile(fake, []byte(`#!/bin/sh
n=$(cat `+count+` 2>/dev/null || echo 0); n=$((n + 1)); echo $n >`+count+`
[ "$n" -ge 3 ] || exit 1
printf '%s\n' "$@" >`+args+`
`), 0o755); err != nil {
		t.Fatal(err)
	}
	script := strings.ReplaceAll(string(f.Contents), "/usr/local/bin/etcdctl", fake)
	script = strings.ReplaceAll(script, "sleep 5", "sleep 0")
	if msg, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("flannel-config script: %v\n%s", err, msg)
	}
	got, err := os.ReadFile(args)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	want := []string{"--endpoints=https://192.168.100.10:2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
		"--cert=/etc/kubernetes/pki/etcd/flannel-client.crt", "--key=/etc/kubernetes/pki/etcd/flannel-client.key", "put", "/coreos.com/network/config"}
	if len(lines) != len(want)+1 {
		t.Fatalf("etcdctl args %q", lines)
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("etcdctl arg %d = %q, want %q", i, lines[i], w)
		}
	}
	var conf struct {
		Network   string
		SubnetLen int
		Backend   struct{ Type string }
	}
	dec := json.NewDecoder(strings.NewReader(lines[len(lines)-1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&conf); err != nil {
		t.Fatalf("flannel network config %q: %v", lines[len(lines)-1], err)
	}
	if conf.Network != p.Clusters[0].PodCIDR.String() || conf.SubnetLen != 24 || conf.Backend.Type != "vxlan" {
		t.Errorf("flannel network config %+v", conf)
	}
}

// TestContainerdConfig has the real containerd parse the rendered
// configuration and checks the settings landed where containerd reads them.
func TestContainerdConfig(t *testing.T) {
	bin := componentBinary(t, "containerd")
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.toml")
	_, n := buildOne(t, "routes", "", defaultNodes, "w1")
	f, _ := fileByPath(n, ContainerdConf)
	if err := os.WriteFile(conf, f.Contents, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--config", conf, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	dump := string(out)
	// containerd ignores unknown keys with a warning, so a misspelt or
	// misplaced setting shows up only here. Version 3 is accepted by every
	// containerd 2.x; newer ones note that they migrate it.
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, "level=") && !strings.Contains(l, "level=info") && !strings.Contains(l, "Configuration migrated from version 3") {
			t.Errorf("containerd complains about the config: %s", l)
		}
	}
	for _, want := range []string{
		"SystemdCgroup = true",
		`sandbox = '` + versions.Default().PauseImage() + `'`,
		`bin_dirs = ['/opt/cni/bin']`,
		`conf_dir = '/etc/cni/net.d'`,
		`BinaryName = '/usr/local/bin/runc'`,
	} {
		if !strings.Contains(dump, want) && !strings.Contains(dump, strings.ReplaceAll(want, "'", `"`)) {
			t.Errorf("containerd's view of the config lacks %s:\n%s", want, dump)
		}
	}
}
