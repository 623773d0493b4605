package lab

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func kubeconfigWith(t *testing.T, name, server string) []byte {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: "t-" + name}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMergeAndRemoveContextLeaveOthersAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, kubeconfigWith(t, "mine", "https://example.invalid"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := clientcmd.LoadFromFile(path)
	name, err := MergeContext(path, kubeconfigWith(t, "kubelab-lab-k1", "https://192.168.100.10:6443"))
	if err != nil {
		t.Fatal(err)
	}
	merged, _ := clientcmd.LoadFromFile(path)
	if merged.Contexts[name] == nil || merged.Contexts["mine"] == nil || merged.CurrentContext != "mine" {
		t.Fatalf("merge lost or switched contexts: %+v", merged.Contexts)
	}
	if err := RemoveContext(path, name); err != nil {
		t.Fatal(err)
	}
	after, _ := clientcmd.LoadFromFile(path)
	if len(after.Contexts) != len(before.Contexts) || len(after.Clusters) != 1 || len(after.AuthInfos) != 1 || after.Contexts["mine"] == nil {
		t.Fatalf("remove did not restore the original: %+v", after)
	}
}

func TestRemoveDeletesFileKubelabCreated(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".kube", "config")
	name, err := MergeContext(path, kubeconfigWith(t, "kubelab-lab-k1", "https://192.168.100.10:6443"))
	if err != nil {
		t.Fatal(err)
	}
	if err := RemoveContext(path, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("kubeconfig kubelab created is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Fatalf("directory kubelab created is still there: %v", err)
	}
}
