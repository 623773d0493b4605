package nodeconfig

import (
	"path"

	"github.com/kubelab/kubelab/internal/pki"
	"github.com/kubelab/kubelab/internal/versions"
)

// Paths on the node. Certificates keep their names from the cluster's PKI
// directory, so a file on a node reads as the file in the lab directory it
// came from.
const (
	KubeDir        = "/etc/kubernetes"
	PKIDir         = "/etc/kubernetes/pki"
	EtcdDataDir    = "/var/lib/etcd"
	CNIConfDir     = "/etc/cni/net.d"
	CNIConfFile    = "/etc/cni/net.d/10-kubelab.conflist"
	ContainerdConf = "/etc/containerd/config.toml"
	ContainerdSock = "/run/containerd/containerd.sock"
	KubeletConfig  = "/etc/kubernetes/kubelet.yaml"
	KubeProxyConf  = "/etc/kubernetes/kube-proxy.yaml"
	// KubeletResolvConf is the resolv.conf kubelet hands to pods.
	KubeletResolvConf = "/etc/kubernetes/resolv.conf"
	FlannelEnv        = "/run/flannel/subnet.env"
	FlannelPrefix     = "/coreos.com/network"
	ScriptDir         = "/usr/local/lib/kubelab"
	HostsFile         = "/etc/hosts"
	// KeepalivedConfig holds the API virtual address's VRRP settings on
	// the control planes of a cluster with two or more.
	KeepalivedConfig = "/etc/keepalived/keepalived.conf"
	// AwaitAPIEndpoint is the script a control plane other than the first
	// runs before its API server starts: it waits for the cluster's API
	// endpoint (see apivip.go).
	AwaitAPIEndpoint = ScriptDir + "/await-api-endpoint"
	NetworkdDir      = "/etc/systemd/network"
	SysctlPath       = "/etc/sysctl.d/90-kubelab.conf"
	ModulesPath      = "/etc/modules-load.d/kubelab.conf"
	HostnamePath     = "/etc/hostname"
	SystemdUnitDir   = "/etc/systemd/system"
	// SSHDConfig sorts before the distribution's and cloud-init's drop-ins
	// (sshd keeps the first value it reads for a keyword).
	SSHDConfig = "/etc/ssh/sshd_config.d/10-kubelab.conf"
	// SignerCertPath and SignerKeyPath are the Kubernetes CA pair the
	// controller manager signs with (certificate signing requests).
	SignerCertPath = "/etc/kubernetes/pki/ca-signer.crt"
	SignerKeyPath  = "/etc/kubernetes/pki/ca-signer.key"
	// EncryptionConfigPath is the API server's encryption configuration.
	EncryptionConfigPath = "/etc/kubernetes/pki/" + pki.EncryptionConfigFile
)

// Ports of the components.
const (
	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
	APIServerPort  = 6443
)

func certPath(name string) string { return path.Join(PKIDir, name+".crt") }
func keyPath(name string) string  { return path.Join(PKIDir, name+".key") }

// The service-account pair is a public/private key pair, not a certificate.
var (
	saPubPath = path.Join(PKIDir, pki.ServiceAccount+".pub")
	saKeyPath = path.Join(PKIDir, pki.ServiceAccount+".key")
)

// kubeconfigPath is where a component's kubeconfig lives on the node.
func kubeconfigPath(component string) string {
	return path.Join(KubeDir, component+".kubeconfig")
}

func bin(name string) string { return path.Join(versions.NodeBinDir, name) }
