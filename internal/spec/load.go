package spec

import (
	"fmt"
	"os"
	"path/filepath"
)

// Load reads, parses, defaults and validates the lab.yaml at path.
func Load(path string) (*Lab, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil, fmt.Errorf("no lab.yaml at %s; run `kubelab init` to write one", path)
		}
		return nil, nil, fmt.Errorf("read lab spec: %w", err)
	}
	lab, err := Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	ApplyDefaults(lab)
	warnings, err := Validate(lab, filepath.Dir(path))
	if err != nil {
		return nil, warnings, fmt.Errorf("%s: %w", path, err)
	}
	return lab, warnings, nil
}
