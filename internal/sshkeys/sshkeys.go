// Package sshkeys makes and keeps the lab's ssh keys: the lab's own login
// key and one pre-generated host key per node. Host keys are made on the
// host because generating them under software emulation costs seconds of
// boot, and because the host can then pin them (no prompts, no TOFU).
// Existing keys are always reused, never rotated.
package sshkeys

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Pair is an ed25519 key pair in OpenSSH formats.
type Pair struct {
	Private []byte // OpenSSH private key PEM; secret
	Public  []byte // authorized_keys line, with trailing newline
}

// Ensure returns the key pair stored at path (private) and path+".pub",
// creating it with mode 0600 when absent. comment ends the public line.
func Ensure(path, comment string) (Pair, error) {
	priv, errPriv := os.ReadFile(path)
	pub, errPub := os.ReadFile(path + ".pub")
	switch {
	case errPriv == nil && errPub == nil:
		if err := check(priv, pub); err != nil {
			return Pair{}, fmt.Errorf("ssh key %s: %w (move it away to make a new one)", path, err)
		}
		return Pair{Private: priv, Public: pub}, nil
	case errPriv == nil || errPub == nil:
		return Pair{}, fmt.Errorf("ssh key %s: only one half of the pair exists; restore the other or remove both", path)
	case !errors.Is(errPriv, os.ErrNotExist):
		return Pair{}, fmt.Errorf("read ssh key: %w", errPriv)
	}
	p, err := generate(comment)
	if err != nil {
		return Pair{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Pair{}, fmt.Errorf("create directory for ssh key %s: %w", path, err)
	}
	if err := writeNew(path, p.Private, 0o600); err != nil {
		return Pair{}, err
	}
	if err := writeNew(path+".pub", p.Public, 0o644); err != nil {
		return Pair{}, err
	}
	return p, nil
}

func generate(comment string) (Pair, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return Pair{}, fmt.Errorf("encode ssh private key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return Pair{}, fmt.Errorf("encode ssh public key: %w", err)
	}
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(sshPub), []byte("\n"))
	if comment != "" {
		line = append(line, ' ')
		line = append(line, comment...)
	}
	return Pair{Private: pem.EncodeToMemory(block), Public: append(line, '\n')}, nil
}

// check makes sure the private and public halves belong together.
func check(priv, pub []byte) error {
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		return fmt.Errorf("unreadable private key: %w", err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		return fmt.Errorf("unreadable public key: %w", err)
	}
	if !bytes.Equal(signer.PublicKey().Marshal(), pk.Marshal()) {
		return errors.New("private and public key do not match")
	}
	return nil
}

// writeNew writes a file that must not exist yet, atomically.
func writeNew(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil { // fails if path appeared meanwhile
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// KnownHostsLine pins a host key for the given addresses, e.g.
// "192.168.100.10:22" and "127.0.0.1:8010".
func KnownHostsLine(hostPub []byte, addresses ...string) (string, error) {
	pk, _, _, _, err := ssh.ParseAuthorizedKey(hostPub)
	if err != nil {
		return "", fmt.Errorf("parse host key: %w", err)
	}
	norm := make([]string, len(addresses))
	for i, a := range addresses {
		norm[i] = knownhosts.Normalize(a)
	}
	return knownhosts.Line(norm, pk), nil
}
