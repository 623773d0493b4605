package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/kubelab/kubelab/internal/fsutil"
)

// File modes: private keys and anything embedding one are readable by the
// owner only.
const (
	dirMode    = 0o700
	keyMode    = 0o600
	publicMode = 0o644
)

// readOptional returns nil, nil when path does not exist.
func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// writeFile replaces path atomically, so a crash never leaves half a key.
func writeFile(path string, data []byte, mode os.FileMode) error {
	return fsutil.WriteFile(path, data, mode, dirMode)
}

// ensureMode tightens a secret file another tool may have left readable.
func ensureMode(path string, mode os.FileMode) (bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	if st.Mode().Perm() == mode {
		return false, nil
	}
	if err := os.Chmod(path, mode); err != nil {
		return false, fmt.Errorf("chmod %s: %w", path, err)
	}
	return true, nil
}
