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

// TestUpdateContextOnlyWhenPresent: certs commands refresh a context an
// earlier up merged, and add none to a kubeconfig without it.
func TestUpdateContextOnlyWhenPresent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, kubeconfigWith(t, "mine", "https://example.invalid"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if name, err := UpdateContext(path, kubeconfigWith(t, "kubelab-lab-k1", "https://192.168.100.10:6443")); err != nil || name != "" {
		t.Fatalf("update without the context: %q %v", name, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("update without the context changed the file")
	}
	if _, err := MergeContext(path, kubeconfigWith(t, "kubelab-lab-k1", "https://192.168.100.10:6443")); err != nil {
		t.Fatal(err)
	}
	if name, err := UpdateContext(path, kubeconfigWith(t, "kubelab-lab-k1", "https://192.168.100.11:6443")); err != nil || name != "kubelab-lab-k1" {
		t.Fatalf("update: %q %v", name, err)
	}
	cfg, _ := clientcmd.LoadFromFile(path)
	if got := cfg.Clusters[cfg.Contexts["kubelab-lab-k1"].Cluster].Server; got != "https://192.168.100.11:6443" || cfg.Contexts["mine"] == nil {
		t.Errorf("after update: server %s, contexts %v", got, cfg.Contexts)
	}
}
