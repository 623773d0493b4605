package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWaitConsole(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "console.log")
	if err := os.WriteFile(log, []byte("boot 1\nKUBELAB-READY n1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	from := ConsoleSize(log)

	// The marker of an earlier boot (before from) does not count.
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	err := WaitConsole(ctx, log, from, "KUBELAB-READY n1", nil)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("old marker counted: %v", err)
	}

	// A marker written in two pieces after from is found.
	go func() {
		f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		defer f.Close()
		f.WriteString("boot 2\nKUBELAB-RE")
		time.Sleep(1200 * time.Millisecond)
		f.WriteString("ADY n1\n")
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitConsole(ctx, log, from, "KUBELAB-READY n1", nil); err != nil {
		t.Fatal(err)
	}

	// A machine that is gone ends the wait early.
	start := time.Now()
	err = WaitConsole(ctx, log, ConsoleSize(log), "never", func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "stopped") || time.Since(start) > 5*time.Second {
		t.Fatalf("dead machine: %v after %v", err, time.Since(start))
	}
	// A missing log is waited for, not an error.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 1100*time.Millisecond)
	defer cancel2()
	if err := WaitConsole(ctx2, filepath.Join(dir, "none"), 0, "x", nil); err == nil {
		t.Fatal("no error for a log that never appears")
	}
}

func TestMachineID(t *testing.T) {
	if got := (Machine{Lab: "lab", Name: "n"}).ID(); got != "lab-n" {
		t.Errorf("ID = %s", got)
	}
	if got := (Machine{Name: "n"}).ID(); got != "n" {
		t.Errorf("ID = %s", got)
	}
}
