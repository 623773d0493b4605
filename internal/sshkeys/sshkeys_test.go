package sshkeys

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestEnsureCreatesThenReuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "id_ed25519")
	first, err := Ensure(path, "kubelab-test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %o, want 600", st.Mode().Perm())
	}
	if _, err := ssh.ParsePrivateKey(first.Private); err != nil {
		t.Fatalf("private key unreadable: %v", err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(first.Public)), " kubelab-test") {
		t.Errorf("public line %q lacks the comment", first.Public)
	}
	second, err := Ensure(path, "kubelab-test")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Private, second.Private) || !bytes.Equal(first.Public, second.Public) {
		t.Fatal("second Ensure made a new key instead of reusing the existing one")
	}
}

func TestEnsureRefusesBrokenPairs(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if _, err := Ensure(a, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(b, ""); err != nil {
		t.Fatal(err)
	}
	// Mismatched halves: a's private key with b's public key.
	bPub, _ := os.ReadFile(b + ".pub")
	if err := os.WriteFile(a+".pub", bPub, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(a, ""); err == nil || !strings.Contains(err.Error(), "do not match") {
		t.Errorf("mismatched pair: err = %v", err)
	}
	// A missing half is refused and nothing is overwritten.
	os.Remove(b + ".pub")
	before, _ := os.ReadFile(b)
	if _, err := Ensure(b, ""); err == nil || !strings.Contains(err.Error(), "only one half") {
		t.Errorf("half pair: err = %v", err)
	}
	after, _ := os.ReadFile(b)
	if !bytes.Equal(before, after) {
		t.Error("the remaining private key was changed")
	}
}

func TestKnownHostsLine(t *testing.T) {
	p, err := Ensure(filepath.Join(t.TempDir(), "host"), "")
	if err != nil {
		t.Fatal(err)
	}
	line, err := KnownHostsLine(p.Public, "192.168.100.10:22", "127.0.0.1:8010")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "192.168.100.10,[127.0.0.1]:8010 ssh-ed25519 ") {
		t.Errorf("known_hosts line %q", line)
	}
}
