package lab

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// UserKubeconfig is the kubeconfig kubelab merges cluster contexts into:
// the first file of $KUBECONFIG, else ~/.kube/config (as kubectl and kind do).
func UserKubeconfig() (string, error) {
	if env := os.Getenv("KUBECONFIG"); env != "" {
		return filepath.SplitList(env)[0], nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find ~/.kube/config: %w", err)
	}
	return filepath.Join(home, ".kube", "config"), nil
}

// MergeContext copies the only context of clusterKubeconfig (with its
// cluster and user entries) into the kubeconfig at path, replacing entries
// of the same name and leaving everything else as it was.
func MergeContext(path string, clusterKubeconfig []byte) (string, error) {
	return mergeContext(path, clusterKubeconfig, false)
}

// UpdateContext is MergeContext for a kubeconfig that already holds the
// context: after new credentials or CAs, the user's context keeps working.
// It returns "" and changes nothing when the context is not there.
func UpdateContext(path string, clusterKubeconfig []byte) (string, error) {
	return mergeContext(path, clusterKubeconfig, true)
}

func mergeContext(path string, clusterKubeconfig []byte, onlyExisting bool) (string, error) {
	src, err := clientcmd.Load(clusterKubeconfig)
	if err != nil {
		return "", fmt.Errorf("read cluster kubeconfig: %w", err)
	}
	dst, err := loadOrEmpty(path)
	if err != nil {
		return "", err
	}
	name := src.CurrentContext
	ctx, ok := src.Contexts[name]
	if !ok {
		return "", fmt.Errorf("cluster kubeconfig has no current context %q", name)
	}
	if _, present := dst.Contexts[name]; onlyExisting && !present {
		return "", nil
	}
	dst.Contexts[name] = ctx
	dst.Clusters[ctx.Cluster] = src.Clusters[ctx.Cluster]
	dst.AuthInfos[ctx.AuthInfo] = src.AuthInfos[ctx.AuthInfo]
	if dst.CurrentContext == "" {
		dst.CurrentContext = name
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := clientcmd.WriteToFile(*dst, path); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return name, nil
}

// RemoveContext deletes the named context and the cluster and user entries
// it refers to from the kubeconfig at path; a missing file or context is
// not an error. The file is removed when nothing else is left in it.
func RemoveContext(path, name string) error {
	cfg, err := clientcmd.LoadFromFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	ctx, ok := cfg.Contexts[name]
	if !ok {
		return nil
	}
	delete(cfg.Contexts, name)
	delete(cfg.Clusters, ctx.Cluster)
	delete(cfg.AuthInfos, ctx.AuthInfo)
	if cfg.CurrentContext == name {
		cfg.CurrentContext = ""
	}
	if len(cfg.Contexts) == 0 && len(cfg.Clusters) == 0 && len(cfg.AuthInfos) == 0 {
		if err := os.Remove(path); err != nil {
			return err
		}
		os.Remove(filepath.Dir(path)) // only succeeds when empty: kubelab made it
		return nil
	}
	return clientcmd.WriteToFile(*cfg, path)
}

func loadOrEmpty(path string) (*clientcmdapi.Config, error) {
	cfg, err := clientcmd.LoadFromFile(path)
	if os.IsNotExist(err) {
		return clientcmdapi.NewConfig(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return cfg, nil
}
