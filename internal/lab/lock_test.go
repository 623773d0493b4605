package lab

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestLockRefusesSecondHolder(t *testing.T) {
	l := Layout{Dir: t.TempDir()}
	first, err := Acquire(l, "up")
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open file descriptions, so a second open in the
	// same process stands in for a second kubelab process.
	_, err = Acquire(l, "destroy")
	if err == nil || !strings.Contains(err.Error(), "kubelab up (pid") {
		t.Fatalf("second lock: err = %v, want it refused naming the holder", err)
	}
	first.Release()
	second, err := Acquire(l, "destroy")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.Release()
}

// TestLockFreedWhenHolderDies: a killed command must not leave the lab locked.
func TestLockFreedWhenHolderDies(t *testing.T) {
	if os.Getenv("KUBELAB_LOCK_CHILD") != "" {
		if _, err := Acquire(Layout{Dir: os.Getenv("KUBELAB_LOCK_CHILD")}, "up"); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		select {} // hold until killed
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=TestLockFreedWhenHolderDies")
	cmd.Env = append(os.Environ(), "KUBELAB_LOCK_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("child did not lock: %q %v", buf, err)
	}
	if _, err := Acquire(Layout{Dir: dir}, "up"); err == nil {
		t.Fatal("lock taken while the child holds it")
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(Layout{Dir: dir}, "up")
	if err != nil {
		t.Fatalf("lock still held after the holder was killed: %v", err)
	}
	l.Release()
}
