package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConsoleTailCleansAndLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	log := "one\r\ntwo\n\x1b[0;32m  OK  \x1b[0m started\nlast\n"
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	tail := ConsoleTail(path, 2)
	if tail != "  OK   started\nlast" {
		t.Errorf("tail = %q", tail)
	}
	if got := ConsoleTail(filepath.Join(t.TempDir(), "none"), 5); !strings.Contains(got, "no console log") {
		t.Errorf("missing log: %q", got)
	}
}
