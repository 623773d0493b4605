package pki

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// EncryptionConfigFile is the API server's encryption configuration in the
// cluster's PKI directory (0600). It holds the keys Secrets are encrypted
// with in etcd; it is the only copy of them, so it is kept like a CA key.
const EncryptionConfigFile = "encryption-config.yaml"

// EncryptionProvider is the provider Secrets are encrypted with: secretbox
// (XSalsa20 and Poly1305), which Kubernetes' documentation rates above
// aescbc (open to padding-oracle attacks) among providers with a local key.
const EncryptionProvider = "secretbox"

// EncryptionKey is one 32-byte secretbox key. Names are key1, key2, ...:
// the number says which key is newer, so a half-done rotation can be read
// from the configuration alone.
type EncryptionKey struct {
	Name   string
	Secret []byte
}

// Number is the key's sequence number (0 when its name has none).
func (k EncryptionKey) Number() int {
	n, _ := strconv.Atoi(strings.TrimPrefix(k.Name, "key"))
	return n
}

// NewEncryptionKey makes a random key numbered after every key in keys.
func NewEncryptionKey(keys []EncryptionKey) (EncryptionKey, error) {
	next := 1
	for _, k := range keys {
		if k.Number() >= next {
			next = k.Number() + 1
		}
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return EncryptionKey{}, fmt.Errorf("encryption key: %w", err)
	}
	return EncryptionKey{Name: fmt.Sprintf("key%d", next), Secret: secret}, nil
}

// The EncryptionConfiguration fields kubelab writes and reads back.
type encryptionConfig struct {
	APIVersion string               `json:"apiVersion"`
	Kind       string               `json:"kind"`
	Resources  []encryptionResource `json:"resources"`
}

type encryptionResource struct {
	Resources []string             `json:"resources"`
	Providers []encryptionProvider `json:"providers"`
}

type encryptionProvider struct {
	Secretbox *encryptionKeys `json:"secretbox,omitempty"`
	Identity  *struct{}       `json:"identity,omitempty"`
}

type encryptionKeys struct {
	Keys []encryptionKeyEntry `json:"keys"`
}

type encryptionKeyEntry struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
}

// EncryptionConfig renders the API server's configuration: Secrets are
// written with keys[0] and read with any of keys; the identity provider
// last lets the API server read Secrets written before encryption was on.
func EncryptionConfig(keys []EncryptionKey) ([]byte, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("encryption configuration without a key")
	}
	box := &encryptionKeys{}
	for _, k := range keys {
		if len(k.Secret) != 32 {
			return nil, fmt.Errorf("encryption key %s has %d bytes, want 32", k.Name, len(k.Secret))
		}
		box.Keys = append(box.Keys, encryptionKeyEntry{Name: k.Name, Secret: base64.StdEncoding.EncodeToString(k.Secret)})
	}
	cfg := encryptionConfig{
		APIVersion: "apiserver.config.k8s.io/v1",
		Kind:       "EncryptionConfiguration",
		Resources: []encryptionResource{{
			Resources: []string{"secrets"},
			Providers: []encryptionProvider{{Secretbox: box}, {Identity: &struct{}{}}},
		}},
	}
	body, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	head := "# The keys Secrets are encrypted with in etcd; the first one encrypts, all decrypt.\n" +
		"# Keep it secret, and keep it: without it the cluster's Secrets cannot be read.\n"
	return append([]byte(head), body...), nil
}

// ParseEncryptionConfig reads the keys back from a configuration kubelab wrote.
func ParseEncryptionConfig(data []byte) ([]EncryptionKey, error) {
	var cfg encryptionConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, err
	}
	if cfg.Kind != "EncryptionConfiguration" || len(cfg.Resources) != 1 || len(cfg.Resources[0].Providers) == 0 ||
		cfg.Resources[0].Providers[0].Secretbox == nil {
		return nil, fmt.Errorf("not an encryption configuration kubelab wrote (one resource entry, secretbox first)")
	}
	var keys []EncryptionKey
	for _, e := range cfg.Resources[0].Providers[0].Secretbox.Keys {
		secret, err := base64.StdEncoding.DecodeString(e.Secret)
		if err != nil || len(secret) != 32 {
			return nil, fmt.Errorf("key %s is not 32 bytes of base64", e.Name)
		}
		keys = append(keys, EncryptionKey{Name: e.Name, Secret: secret})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no secretbox key")
	}
	return keys, nil
}

// ReadEncryptionKeys returns the keys in the cluster's configuration, the
// writing key first.
func ReadEncryptionKeys(pkiDir string) ([]EncryptionKey, error) {
	path := filepath.Join(pkiDir, EncryptionConfigFile)
	data, err := readOptional(path)
	if err != nil {
		return nil, err
	}
	if data == nil {
		return nil, fmt.Errorf("%s does not exist; run kubelab render", path)
	}
	keys, err := ParseEncryptionConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// WriteEncryptionKeys replaces the cluster's configuration with keys.
func WriteEncryptionKeys(pkiDir string, keys []EncryptionKey) error {
	data, err := EncryptionConfig(keys)
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(pkiDir, EncryptionConfigFile), data, keyMode)
}

// ensureEncryption creates the configuration with one key when it is
// missing and otherwise checks that it is readable.
func (cl *Cluster) ensureEncryption(rep *Report) error {
	path := filepath.Join(cl.Dir, EncryptionConfigFile)
	data, err := readOptional(path)
	if err != nil {
		return err
	}
	if data == nil {
		key, err := NewEncryptionKey(nil)
		if err != nil {
			return err
		}
		if data, err = EncryptionConfig([]EncryptionKey{key}); err != nil {
			return err
		}
		if err := writeFile(path, data, keyMode); err != nil {
			return err
		}
		rep.add(EncryptionConfigFile, Created, "")
	} else {
		if _, err := ParseEncryptionConfig(data); err != nil {
			return fmt.Errorf("%s: %w; restore it (without it the cluster's Secrets cannot be read)", path, err)
		}
		if changed, err := ensureMode(path, keyMode); err != nil {
			return err
		} else if changed {
			rep.add(EncryptionConfigFile, Chmod, path)
		}
	}
	cl.encryption = bytes.Clone(data)
	return nil
}

// EncryptionConfig returns the API server's encryption configuration.
func (cl *Cluster) EncryptionConfig() []byte { return bytes.Clone(cl.encryption) }
