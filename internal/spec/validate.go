package spec

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/kubelab/kubelab/internal/ipmath"
)

var (
	dnsLabel      = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	imageName     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	ifName        = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
	versionSyntax = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)
)

const (
	minMemory = 256 << 20
	minDisk   = 2 << 30
	maxCPUs   = 64
)

// Validate checks a defaulted spec. baseDir resolves relative file paths
// (ssh keys, Butane snippets); it is the directory holding lab.yaml.
// Address allocation problems (duplicates, blocks, forwards) are found by the
// plan, which is where addresses are computed. Warnings are legal but
// probably unintended settings.
func Validate(lab *Lab, baseDir string) (warnings []Warning, err error) {
	var errs Errors
	if lab.APIVersion != APIVersion {
		errs.Add("apiVersion", "is %q; this kubelab reads %q", lab.APIVersion, APIVersion)
	}
	if lab.Kind != Kind {
		errs.Add("kind", "is %q; must be %q", lab.Kind, Kind)
	}
	checkLabel(&errs, "name", lab.Name)
	checkEnum(&errs, "hypervisor", lab.Hypervisor, HypervisorQEMU, HypervisorLibvirt, HypervisorXen)
	validateLibvirt(&errs, lab)
	validateXen(&errs, lab)
	labNet := validateNetwork(&errs, &lab.Network)
	validateCertificates(&errs, lab.Certificates)
	checkDefaults(&errs, lab.Defaults)
	for i, k := range lab.SSHKeys {
		checkSSHKey(&errs, Index("sshKeys", i), ResolvePath(baseDir, k))
	}
	if len(lab.Clusters) == 0 {
		errs.Add("clusters", "no clusters; add at least one (run `kubelab init` for an example)")
	}
	clusterByName := map[string]int{}
	clusterByIndex := map[int]int{}
	nodeByName := map[string]string{}
	for i := range lab.Clusters {
		c := &lab.Clusters[i]
		p := Index("clusters", i)
		checkLabel(&errs, Field(p, "name"), c.Name)
		if j, dup := clusterByName[c.Name]; dup && c.Name != "" {
			errs.Add(Field(p, "name"), "cluster %q is already defined at clusters[%d]; cluster names must be unique", c.Name, j)
		}
		clusterByName[c.Name] = i
		if c.Index < 1 || c.Index > MaxClusters {
			errs.Add(Field(p, "index"), "is %d; must be 1..%d (cluster k owns addresses .10k to .10k+9)", c.Index, MaxClusters)
		} else if j, dup := clusterByIndex[c.Index]; dup {
			errs.Add(Field(p, "index"), "block %d is already used by clusters[%d]; each cluster needs its own block 1..%d", c.Index, j, MaxClusters)
		}
		clusterByIndex[c.Index] = i
		if !versionSyntax.MatchString(c.KubernetesVersion) {
			errs.Add(Field(p, "kubernetesVersion"), "%q is not a Kubernetes version; write it like v1.37.2", c.KubernetesVersion)
		}
		w := validateClusterNetworks(&errs, p, c, labNet)
		warnings = append(warnings, w...)
		checkEnum(&errs, Field(p, "podNetwork"), c.PodNetwork, PodNetworkRoutes, PodNetworkFlannel)
		checkEnum(&errs, Field(p, "provisioning"), c.Provisioning, ProvisionOverlay, ProvisionCloudInit, ProvisionIgnition)
		for j, b := range c.Butane {
			checkFile(&errs, Index(Field(p, "butane"), j), ResolvePath(baseDir, b), "Butane snippet")
		}
		warnings = append(warnings, validateNodes(&errs, p, c, nodeByName)...)
	}
	return warnings, errs.Err()
}

func validateNetwork(errs *Errors, n *Network) netip.Prefix {
	labNet := checkPrefix(errs, "network.cidr", n.CIDR, false)
	if labNet.IsValid() && labNet.Bits() > 24 {
		errs.Add("network.cidr", "%s is too small; the address plan needs at least a /24 (clusters own .10-.99)", labNet)
		labNet = netip.Prefix{}
	}
	for _, f := range []struct{ path, val string }{{"network.gateway", n.Gateway}, {"network.failsafe", n.Failsafe}} {
		if f.val == "" {
			continue
		}
		a, err := netip.ParseAddr(f.val)
		switch {
		case err != nil || !a.Is4():
			errs.Add(f.path, "%q is not an IPv4 address", f.val)
		case labNet.IsValid() && !labNet.Contains(a):
			errs.Add(f.path, "%s is outside the lab network %s", a, labNet)
		case labNet.IsValid() && (a == labNet.Addr() || a == ipmath.Last(labNet)):
			errs.Add(f.path, "%s is the network or broadcast address of %s; pick a host address", a, labNet)
		}
	}
	if !ifName.MatchString(n.Bridge) {
		errs.Add("network.bridge", "%q is not a valid interface name (1-15 letters, digits, '-', '_', '.')", n.Bridge)
	}
	if n.Namespace != "" && !ifName.MatchString(n.Namespace) && !dnsLabel.MatchString(n.Namespace) {
		errs.Add("network.namespace", "%q is not a valid network namespace name (letters, digits, '-', '_')", n.Namespace)
	}
	if n.CIDR6 != "" {
		checkPrefix(errs, "network.cidr6", n.CIDR6, true)
	}
	return labNet
}

func validateClusterNetworks(errs *Errors, p string, c *Cluster, labNet netip.Prefix) []Warning {
	type named struct {
		path   string
		prefix netip.Prefix
	}
	var nets []named
	if labNet.IsValid() {
		nets = append(nets, named{"network.cidr", labNet})
	}
	if pod := checkPrefix(errs, Field(p, "podCIDR"), c.PodCIDR, false); pod.IsValid() {
		if pod.Bits() > 24 {
			errs.Add(Field(p, "podCIDR"), "%s is too small; each node gets a /24, so use /16 to /23 (default %s)", pod, DefaultPodCIDR)
		}
		nets = append(nets, named{Field(p, "podCIDR"), pod})
	}
	if svc := checkPrefix(errs, Field(p, "serviceCIDR"), c.ServiceCIDR, false); svc.IsValid() {
		if svc.Bits() < 12 || svc.Bits() > 28 {
			errs.Add(Field(p, "serviceCIDR"), "%s: the service network must be /12 to /28 (default %s)", svc, DefaultServiceCIDR)
		}
		nets = append(nets, named{Field(p, "serviceCIDR"), svc})
	}
	checkEnum(errs, Field(p, "ipFamily"), c.IPFamily, IPv4, DualStack)
	if c.IPFamily == DualStack {
		for _, f := range []struct{ path, val string }{{Field(p, "podCIDR6"), c.PodCIDR6}, {Field(p, "serviceCIDR6"), c.ServiceCIDR6}} {
			if pr := checkPrefix(errs, f.path, f.val, true); pr.IsValid() {
				nets = append(nets, named{f.path, pr})
			}
		}
	} else if c.PodCIDR6 != "" || c.ServiceCIDR6 != "" {
		errs.Add(Field(p, "ipFamily"), "is %q but IPv6 CIDRs are set; set ipFamily: dual or remove podCIDR6/serviceCIDR6", c.IPFamily)
	}
	for i := range nets {
		for j := i + 1; j < len(nets); j++ {
			if nets[i].prefix.Overlaps(nets[j].prefix) {
				errs.Add(nets[j].path, "%s overlaps %s (%s); the lab, pod and service networks must be disjoint", nets[j].prefix, nets[i].path, nets[i].prefix)
			}
		}
	}
	if c.APIPort < 1 || c.APIPort > 65535 {
		errs.Add(Field(p, "apiPort"), "is %d; must be a TCP port 1..65535", c.APIPort)
	}
	if _, _, err := ParsePortRange(c.NodePortRange); err != nil {
		errs.Add(Field(p, "nodePortRange"), "%v", err)
	}
	return nil
}

func validateNodes(errs *Errors, p string, c *Cluster, nodeByName map[string]string) []Warning {
	var warnings []Warning
	if len(c.Nodes) == 0 {
		errs.Add(Field(p, "nodes"), "cluster %q has no nodes; add at least one with roles [control-plane, etcd]", c.Name)
		return nil
	}
	var etcd, cp int
	for j := range c.Nodes {
		n := &c.Nodes[j]
		np := Index(Field(p, "nodes"), j)
		checkLabel(errs, Field(np, "name"), n.Name)
		if where, dup := nodeByName[n.Name]; dup && n.Name != "" {
			errs.Add(Field(np, "name"), "node %q is already defined at %s; node names must be unique in the lab", n.Name, where)
		} else {
			nodeByName[n.Name] = np
		}
		if len(n.Roles) == 0 {
			errs.Add(Field(np, "roles"), "no roles; give one or more of %s, %s, %s", RoleEtcd, RoleControlPlane, RoleWorker)
		}
		seen := map[string]bool{}
		for k, r := range n.Roles {
			rp := Index(Field(np, "roles"), k)
			checkEnum(errs, rp, r, RoleEtcd, RoleControlPlane, RoleWorker)
			if seen[r] {
				errs.Add(rp, "role %q is listed twice", r)
			}
			seen[r] = true
		}
		if seen[RoleEtcd] {
			etcd++
		}
		if seen[RoleControlPlane] {
			cp++
		}
		if n.Address != "" {
			if a, err := netip.ParseAddr(n.Address); err != nil || !a.Is4() {
				errs.Add(Field(np, "address"), "%q is not an IPv4 address", n.Address)
			}
		}
		if n.MAC != "" {
			if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
				errs.Add(Field(np, "mac"), "%q is not a MAC address; write it like 00:16:3e:4e:31:14", n.MAC)
			} else if hw[0]&1 == 1 {
				errs.Add(Field(np, "mac"), "%s is a multicast address; the first byte must be even", n.MAC)
			}
		}
		if !imageName.MatchString(n.Image) {
			errs.Add(Field(np, "image"), "%q is not an image name (lower-case letters, digits, '.', '_', '-')", n.Image)
		}
		checkResources(errs, np, n.CPUs, n.Memory, n.Disk)
		checkEnum(errs, Field(np, "provisioning"), n.Provisioning, ProvisionOverlay, ProvisionCloudInit, ProvisionIgnition)
	}
	if cp == 0 {
		errs.Add(Field(p, "nodes"), "cluster %q has no control-plane node; give one node the role %s", c.Name, RoleControlPlane)
	}
	if etcd == 0 {
		errs.Add(Field(p, "nodes"), "cluster %q has no etcd member; give one or three nodes the role %s", c.Name, RoleEtcd)
	} else if etcd%2 == 0 {
		warnings = append(warnings, Warning{Path: Field(p, "nodes"), Msg: fmt.Sprintf("cluster %q has %d etcd members; an even count tolerates no more failures than %d and risks split votes", c.Name, etcd, etcd-1)})
	}
	return warnings
}

func checkDefaults(errs *Errors, d NodeDefaults) {
	if !imageName.MatchString(d.Image) {
		errs.Add("defaults.image", "%q is not an image name (lower-case letters, digits, '.', '_', '-')", d.Image)
	}
	checkResources(errs, "defaults", d.CPUs, d.Memory, d.Disk)
	checkEnum(errs, "defaults.provisioning", d.Provisioning, ProvisionOverlay, ProvisionCloudInit, ProvisionIgnition)
}

func checkResources(errs *Errors, p string, cpus int, memory, disk string) {
	if cpus < 1 || cpus > maxCPUs {
		errs.Add(Field(p, "cpus"), "is %d; must be 1..%d", cpus, maxCPUs)
	}
	if m, err := ParseSize(memory); err != nil {
		errs.Add(Field(p, "memory"), "%v", err)
	} else if m < minMemory {
		errs.Add(Field(p, "memory"), "%s is too little; a node needs at least 256MiB", memory)
	}
	if d, err := ParseSize(disk); err != nil {
		errs.Add(Field(p, "disk"), "%v", err)
	} else if d < minDisk {
		errs.Add(Field(p, "disk"), "%s is too small; a node disk needs at least 2GiB", disk)
	}
}

func checkLabel(errs *Errors, path, v string) {
	if !dnsLabel.MatchString(v) {
		errs.Add(path, "%q is not a valid name: use lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters", v)
	}
}

func checkEnum(errs *Errors, path, v string, valid ...string) {
	for _, ok := range valid {
		if v == ok {
			return
		}
	}
	errs.Add(path, "%q is not valid; use one of %s", v, strings.Join(valid, ", "))
}

func checkPrefix(errs *Errors, path, v string, want6 bool) netip.Prefix {
	pr, err := netip.ParsePrefix(v)
	family := "IPv4"
	if want6 {
		family = "IPv6"
	}
	switch {
	case err != nil:
		errs.Add(path, "%q is not a CIDR; write an %s network like %s", v, family, map[bool]string{false: "192.168.100.0/24", true: "fd00:1::/64"}[want6])
	case pr.Addr().Is4() == want6:
		errs.Add(path, "%s is not an %s network", pr, family)
	case pr.Masked() != pr:
		errs.Add(path, "%s has host bits set; did you mean %s?", pr, pr.Masked())
	default:
		return pr
	}
	return netip.Prefix{}
}

func checkSSHKey(errs *Errors, path, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		errs.Add(path, "cannot read ssh public key %s: %v", file, unwrapPathError(err))
		return
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey(data); err != nil {
		errs.Add(path, "%s is not an ssh public key (expected one line like \"ssh-ed25519 AAAA... comment\"): %v", file, err)
	}
}

func checkFile(errs *Errors, path, file, what string) {
	if st, err := os.Stat(file); err != nil {
		errs.Add(path, "cannot read %s %s: %v", what, file, unwrapPathError(err))
	} else if st.IsDir() {
		errs.Add(path, "%s %s is a directory, not a file", what, file)
	}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// ResolvePath expands ~ and makes p absolute relative to baseDir.
func ResolvePath(baseDir, p string) string {
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, p[2:])
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(baseDir, p)
	}
	return filepath.Clean(p)
}

// ParsePortRange reads "31000-31999".
func ParsePortRange(s string) (from, to int, err error) {
	a, b, ok := strings.Cut(s, "-")
	from, err1 := strconv.Atoi(strings.TrimSpace(a))
	to, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q is not a port range; write it like 31000-31999", s)
	}
	if from < 1 || to > 65535 || from > to {
		return 0, 0, fmt.Errorf("%q: ports must be 1..65535 with the first not above the last", s)
	}
	return from, to, nil
}

// validateLibvirt checks libvirt.uri: a QEMU connection by any transport
// libvirt's client has (unix socket, tcp, tls, ssh). Whether the daemon
// runs on this host, where the node disks, kernels and taps are, only the
// daemon can say: the driver asks it when it connects.
func validateLibvirt(errs *Errors, lab *Lab) {
	if lab.Libvirt.URI == "" {
		return
	}
	if lab.Hypervisor != HypervisorLibvirt {
		errs.Add("libvirt.uri", "is set but hypervisor is %q; set hypervisor: %s or remove libvirt", lab.Hypervisor, HypervisorLibvirt)
		return
	}
	u, err := url.Parse(lab.Libvirt.URI)
	if err != nil {
		errs.Add("libvirt.uri", "%q is not a URI: %v", lab.Libvirt.URI, err)
		return
	}
	driverName, transport, _ := strings.Cut(u.Scheme, "+")
	switch {
	case driverName != "qemu":
		errs.Add("libvirt.uri", "%q: driver %q is not supported; kubelab runs QEMU guests (qemu:///system, qemu:///session, qemu+ssh://HOST/system, ...)", lab.Libvirt.URI, driverName)
	case !libvirtTransports[transport]:
		errs.Add("libvirt.uri", "%q: transport %q is not supported; use one of unix, tcp, tls, ssh, libssh", lab.Libvirt.URI, transport)
	case transport == "unix" && u.Host != "":
		errs.Add("libvirt.uri", "%q: the unix transport takes no host (%q); a socket path goes in ?socket=", lab.Libvirt.URI, u.Host)
	case transport != "" && transport != "unix" && u.Host == "":
		errs.Add("libvirt.uri", "%q: the %s transport needs a host, like qemu+%s://127.0.0.1/system", lab.Libvirt.URI, transport, transport)
	case u.Path != "/system" && u.Path != "/session":
		errs.Add("libvirt.uri", "%q: path %q is neither /system nor /session", lab.Libvirt.URI, u.Path)
	}
}

// libvirtTransports are the transports of libvirt's client that kubelab's
// (go-libvirt) has; "" is qemu:/// (a socket, or TLS with a host).
var libvirtTransports = map[string]bool{"": true, "unix": true, "tcp": true, "tls": true, "ssh": true, "libssh": true, "libssh2": true}

// validateXen checks what the Xen driver cannot do: a lab network inside
// a namespace (xl's vif-bridge plugs each guest into a bridge of dom0's
// own namespace) and Ignition without the config server (a PV guest has
// no fw_cfg; it fetches its config by URL).
func validateXen(errs *Errors, lab *Lab) {
	if lab.Xen.Disk != "" && lab.Hypervisor != HypervisorXen {
		errs.Add("xen.disk", "is set but hypervisor is %q; set hypervisor: %s or remove xen", lab.Hypervisor, HypervisorXen)
		return
	}
	if lab.Hypervisor != HypervisorXen {
		return
	}
	checkEnum(errs, "xen.disk", lab.Xen.Disk, XenDiskQCOW2, XenDiskRaw)
	if lab.Network.Namespace != "" {
		errs.Add("network.namespace", "is set, but Xen's vif-bridge script plugs each guest into a bridge in dom0's own network namespace; remove network.namespace, or use hypervisor: %s or %s", HypervisorQEMU, HypervisorLibvirt)
	}
	for i, c := range lab.Clusters {
		for j, n := range c.Nodes {
			if n.Provisioning == ProvisionIgnition && !lab.Network.ConfigServer {
				errs.Add(Field(Index(Field(Index("clusters", i), "nodes"), j), "provisioning"), "is ignition, which a Xen guest fetches from the config server (a PV guest has no fw_cfg); set network.configServer: true, or use %s or %s", ProvisionOverlay, ProvisionCloudInit)
			}
		}
	}
}
