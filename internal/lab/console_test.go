package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWaitConsoleOnlyAfterOffset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("old boot\nKUBELAB-READY n1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	off := consoleSize(path)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if err := waitConsole(ctx, path, off, "KUBELAB-READY n1"); err == nil {
		t.Fatal("found the marker of an earlier boot")
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("\x1b[0;32m  OK  \x1b[0m started\nKUBELAB-READY n1\n")
		f.Close()
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := waitConsole(ctx2, path, off, "KUBELAB-READY n1"); err != nil {
		t.Fatalf("marker of the new boot not seen: %v", err)
	}
	tail := ConsoleTail(path, 2)
	if strings.Contains(tail, "\x1b") || !strings.Contains(tail, "OK   started") {
		t.Errorf("tail not cleaned: %q", tail)
	}
}
