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

func TestStageScanner(t *testing.T) {
	const marker = "KUBELAB-READY cp1"
	// Console text as a kubelab node prints it, cut into chunks at awkward
	// places (in the middle of every signal).
	console := "\x1b[2J\x1b[01;01HSeaBIOS (version 1.16)\r\nBooting from ROM...\r\n" +
		"[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org)\r\n" +
		"[    0.512000] Run /init as init process\r\n" +
		"[    3.100000] systemd[1]: systemd 252 running in system mode\r\n" +
		"\x1b[0;1;39mWelcome to \x1b[0mDebian GNU/Linux 12 (bookworm)\r\n" +
		"[  OK  ] Started kubelet.service\r\n" +
		"KUBELAB-READY cp1\r\n"
	tests := []struct {
		name   string
		chunks []string
		want   []string // stage after each chunk
	}{{
		name:   "whole log at once jumps to ready",
		chunks: []string{console},
		want:   []string{StageReady},
	}, {
		name: "signals split over chunks",
		chunks: []string{
			"SeaBIOS\r\nLinux ver", "sion 6.1\r\n", "[ 3.1] syst", "emd[1]: up\r\n",
			"KUBELAB-REA", "DY cp1\r\n",
		},
		want: []string{StageStarting, StageKernel, StageKernel, StageSystemd, StageSystemd, StageReady},
	}, {
		name:   "Welcome to marks systemd when the kernel is quiet",
		chunks: []string{"Linux version 6.1\n", "Welcome to Debian\n"},
		want:   []string{StageKernel, StageSystemd},
	}, {
		name:   "stages never go back; a marker of another node is not ours",
		chunks: []string{"systemd[1]: x\n", "Linux version again\n", "KUBELAB-READY w1\n"},
		want:   []string{StageSystemd, StageSystemd, StageSystemd},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStageScanner(marker)
			if s.Stage() != StageStarting {
				t.Fatalf("new scanner in stage %s", s.Stage())
			}
			prev := StageStarting
			for i, c := range tc.chunks {
				got, changed := s.Feed([]byte(c))
				if got != tc.want[i] || changed != (got != prev) {
					t.Errorf("chunk %d %q: stage %s (changed %v), want %s", i, c, got, changed, tc.want[i])
				}
				prev = got
			}
		})
	}
	if st, _ := NewStageScanner("").Feed([]byte(console)); st != StageSystemd {
		t.Errorf("without a marker the scanner stops at systemd, got %s", st)
	}
}

func TestWaitConsoleObserve(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "console.log")
	if err := os.WriteFile(log, []byte("old boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	from := ConsoleSize(log)
	go func() {
		f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		defer f.Close()
		f.WriteString("Linux version 6.1\n")
		time.Sleep(1200 * time.Millisecond)
		f.WriteString("systemd[1]: hi\nKUBELAB-READY n1\n")
	}()
	var seen []byte
	var stages []string
	sc := NewStageScanner("KUBELAB-READY n1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := WaitConsoleWith(ctx, log, from, "KUBELAB-READY n1", WaitOptions{Observe: func(chunk []byte) {
		seen = append(seen, chunk...)
		if st, changed := sc.Feed(chunk); changed {
			stages = append(stages, st)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if string(seen) != "Linux version 6.1\nsystemd[1]: hi\nKUBELAB-READY n1\n" {
		t.Errorf("observed %q (the old boot must not be observed)", seen)
	}
	// The second write brings systemd and the marker together: the stage
	// jumps to ready. The first poll may or may not see the kernel alone.
	if got := strings.Join(stages, ","); got != "kernel,ready" && got != "ready" {
		t.Errorf("stages %v", stages)
	}
}
