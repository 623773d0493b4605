package nodeconfig

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/spec"
)

// runsPods reports whether a node takes part in the pod network: workers
// run pods, control planes must reach them (webhooks, aggregated APIs).
func runsPods(n plan.Node) bool {
	return n.HasRole(spec.RoleWorker) || n.HasRole(spec.RoleControlPlane)
}

func (b *builder) podNetwork() error {
	switch b.in.Cluster.PodNetwork {
	case spec.PodNetworkRoutes:
		return b.routes()
	case spec.PodNetworkFlannel:
		return b.flannel()
	}
	return nil
}

// routes is The Hard Way's pod network: each worker's pod CIDR on its CNI
// bridge, static routes to every other worker's pod CIDR.
func (b *builder) routes() error {
	n, c := b.in.Node, b.in.Cluster
	if runsPods(n) {
		for _, w := range c.NodesWithRole(spec.RoleWorker) {
			if w.Name == n.Name {
				continue
			}
			if !w.PodCIDR.IsValid() {
				return fmt.Errorf("worker %s has no pod CIDR in the plan", w.Name)
			}
			b.node.Network.Routes = append(b.node.Network.Routes, Route{To: w.PodCIDR, Via: w.Address})
			if w.PodCIDR6.IsValid() && w.Address6.IsValid() && n.Address6.IsValid() {
				b.node.Network.Routes = append(b.node.Network.Routes, Route{To: w.PodCIDR6, Via: w.Address6})
			}
		}
	}
	if !n.HasRole(spec.RoleWorker) {
		return nil
	}
	if !n.PodCIDR.IsValid() {
		return fmt.Errorf("the plan gives worker %s no pod CIDR", n.Name)
	}
	ranges := [][]map[string]string{{{"subnet": n.PodCIDR.String()}}}
	routes := []map[string]string{{"dst": "0.0.0.0/0"}}
	if n.PodCIDR6.IsValid() {
		ranges = append(ranges, []map[string]string{{"subnet": n.PodCIDR6.String()}})
		routes = append(routes, map[string]string{"dst": "::/0"})
	}
	conf, err := cniConflist(ranges, routes, true, 0)
	if err != nil {
		return err
	}
	return b.addFile(File{Path: CNIConfFile, Mode: 0o644, Contents: conf})
}

// cniConflist is the node's CNI network: a bridge that is the pods'
// gateway, host-local addresses from the node's pod ranges, and portmap
// for hostPort. containerd's CRI brings up each pod's lo itself with the
// loopback plugin, so it is not part of the chain.
func cniConflist(ranges [][]map[string]string, routes []map[string]string, ipMasq bool, mtu int) ([]byte, error) {
	bridge := map[string]any{
		"type":        "bridge",
		"bridge":      "cni0",
		"isGateway":   true,
		"ipMasq":      ipMasq,
		"hairpinMode": true,
		"ipam": map[string]any{
			"type":   "host-local",
			"ranges": ranges,
			"routes": routes,
		},
	}
	if mtu > 0 {
		bridge["mtu"] = mtu
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "kubelab",
		"plugins": []any{
			bridge,
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("CNI configuration: %w", err)
	}
	return append(out, '\n'), nil
}

// FlannelNetworkConfig is the network configuration flannel reads from
// etcd at <prefix>/config, as the Xen guide stores it.
func FlannelNetworkConfig(c plan.Cluster) ([]byte, error) {
	conf := map[string]any{
		"Network":   c.PodCIDR.String(),
		"SubnetLen": 24,
		"Backend":   map[string]string{"Type": "vxlan"},
	}
	if c.PodCIDR6.IsValid() {
		conf["EnableIPv6"] = true
		conf["IPv6Network"] = c.PodCIDR6.String()
		conf["IPv6SubnetLen"] = 64
	}
	return json.Marshal(conf)
}

func (b *builder) flannel() error {
	n, c := b.in.Node, b.in.Cluster
	endpoints := strings.Join(etcdClientURLs(c), ",")
	if endpoints == "" {
		return fmt.Errorf("flannel keeps its state in etcd but cluster %s has no etcd member", c.Name)
	}
	members := etcdMembers(c)
	first := members[0].Name == n.Name
	if !runsPods(n) && !first {
		return nil
	}
	if err := b.caCert(pki.EtcdCA); err != nil {
		return err
	}
	// flanneld and the one-shot that stores its network config both use
	// flannel's own etcd client certificate: no other client key leaves
	// the nodes that need it.
	if err := b.cert(pki.EtcdFlannelClient); err != nil {
		return err
	}
	etcdTLS := []string{
		"--cacert=" + certPath(pki.EtcdCA),
		"--cert=" + certPath(pki.EtcdFlannelClient),
		"--key=" + keyPath(pki.EtcdFlannelClient),
	}
	if first {
		netConf, err := FlannelNetworkConfig(c)
		if err != nil {
			return fmt.Errorf("flannel network config: %w", err)
		}
		script := fmt.Sprintf(`#!/bin/sh
set -eu
conf='%s'
tries=0
# etcd answers once a quorum of members is up, which can take minutes
# when all nodes boot at once under emulation.
until %s --endpoints=%s %s put %s/config "$conf" >/dev/null; do
	tries=$((tries + 1))
	if [ "$tries" -ge 120 ]; then
		echo "kubelab-flannel-config: etcd at %s did not answer in 10 minutes" >&2
		exit 1
	fi
	sleep 5
done
echo "kubelab-flannel-config: stored %s/config: $conf"
`, netConf, bin("etcdctl"), endpoints, strings.Join(etcdTLS, " "), FlannelPrefix, endpoints, FlannelPrefix)
		path := ScriptDir + "/flannel-config"
		if err := b.text(path, 0o755, "Stores flannel's network configuration in etcd.", script); err != nil {
			return err
		}
		b.unit("kubelab-flannel-config.service", fmt.Sprintf(`[Unit]
Description=kubelab: store flannel's network configuration in etcd
After=etcd.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`, path))
		b.enable("kubelab-flannel-config.service")
	}
	if !runsPods(n) {
		return nil
	}
	flags := []string{
		"--etcd-endpoints=" + endpoints,
		"--etcd-prefix=" + FlannelPrefix,
		"--etcd-cafile=" + certPath(pki.EtcdCA),
		"--etcd-certfile=" + certPath(pki.EtcdFlannelClient),
		"--etcd-keyfile=" + keyPath(pki.EtcdFlannelClient),
		"--iface=eth0",
		// flanneld masquerades traffic leaving the pod network, so the
		// CNI bridge does not (pod-to-pod traffic keeps its addresses).
		"--ip-masq",
	}
	b.unit("flanneld.service", fmt.Sprintf(`[Unit]
Description=flannel vxlan overlay for cluster %s
Documentation=https://github.com/flannel-io/flannel
After=network-online.target etcd.service
Wants=network-online.target

[Service]
Type=notify
%s
Restart=always
RestartSec=10
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`, c.Name, execStart(bin("flanneld"), flags)))
	b.enable("flanneld.service")
	if !n.HasRole(spec.RoleWorker) {
		return nil
	}
	return b.flannelCNI()
}

// flannelCNI writes the CNI network from the subnet flannel leased, which
// is known only at run time: what flannel's own CNI plugin would do.
func (b *builder) flannelCNI() error {
	ipv6 := b.in.Cluster.PodCIDR6.IsValid()
	script := fmt.Sprintf(`#!/bin/sh
set -eu
env=%s
out=%s
tries=0
while [ ! -s "$env" ]; do
	tries=$((tries + 1))
	if [ "$tries" -ge 600 ]; then
		echo "kubelab-flannel-cni: flanneld wrote no $env in 10 minutes" >&2
		exit 1
	fi
	sleep 1
done
. "$env"
# flannel gives the first address of its /24 (x.y.z.1/24); host-local
# wants the network address.
case "$FLANNEL_SUBNET" in
*.1/24) subnet="${FLANNEL_SUBNET%%.1/24}.0/24" ;;
*) echo "kubelab-flannel-cni: unexpected FLANNEL_SUBNET=$FLANNEL_SUBNET" >&2; exit 1 ;;
esac
ranges="[{\"subnet\": \"$subnet\"}]"
routes="{\"dst\": \"0.0.0.0/0\"}"
`, FlannelEnv, CNIConfFile)
	if ipv6 {
		script += `case "${FLANNEL_IPV6_SUBNET:-}" in
*::1/64) subnet6="${FLANNEL_IPV6_SUBNET%1/64}/64" ;;
*) echo "kubelab-flannel-cni: unexpected FLANNEL_IPV6_SUBNET=${FLANNEL_IPV6_SUBNET:-}" >&2; exit 1 ;;
esac
ranges="$ranges, [{\"subnet\": \"$subnet6\"}]"
routes="$routes, {\"dst\": \"::/0\"}"
`
	}
	script += `mkdir -p "$(dirname "$out")"
cat >"$out.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kubelab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "mtu": $FLANNEL_MTU,
      "ipam": {
        "type": "host-local",
        "ranges": [$ranges],
        "routes": [$routes]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
EOF
mv "$out.tmp" "$out"
echo "kubelab-flannel-cni: wrote $out for $subnet"
`
	path := ScriptDir + "/flannel-cni"
	if err := b.text(path, 0o755, "Writes the CNI network from flannel's subnet lease.", script); err != nil {
		return err
	}
	b.unit("kubelab-flannel-cni.service", fmt.Sprintf(`[Unit]
Description=kubelab: write the CNI network from flannel's subnet lease
After=flanneld.service
Requires=flanneld.service
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`, path))
	b.enable("kubelab-flannel-cni.service")
	return nil
}
