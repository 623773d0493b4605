// Package daemon runs the lab's background servers (the config server,
// dnsmasq): started in their own session with their output in a log file,
// found again through a pid file checked against the process's command
// line (so a reused pid is never taken for them), never started twice, and
// stopped with SIGTERM, then SIGKILL.
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/fsutil"
)

// Process names one background server.
type Process struct {
	// Name is what errors call it ("config server").
	Name string
	// PidFile holds its pid while it runs.
	PidFile string
	// LogFile receives its stdout and stderr (appended).
	LogFile string
	// Match is a run of its arguments that only it has (such as the lab
	// directory it serves); /proc/<pid>/cmdline must contain it.
	Match []string
}

// Running returns the pid of the process if it runs.
func (p Process) Running() (int, bool) {
	data, err := os.ReadFile(p.PidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 || !p.is(pid) {
		return 0, false
	}
	return pid, true
}

// is checks /proc/pid/cmdline for Match. A zombie has an empty command
// line and so is not the process any more.
func (p Process) is(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(p.Match) == 0 {
		return false
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	for i := 0; i+len(p.Match) <= len(args); i++ {
		if slices.Equal(args[i:i+len(p.Match)], p.Match) {
			return true
		}
	}
	return false
}

// Start starts cmd as the process unless it runs already, and waits (at
// most timeout) until its log shows readyLine. started says whether this
// call started it. When it exits or stays silent, the error carries the
// end of its log. start, when not nil, starts cmd instead of cmd.Start
// (to start it inside a network namespace).
func (p Process) Start(cmd *exec.Cmd, readyLine string, timeout time.Duration, start func(*exec.Cmd) error) (pid int, started bool, err error) {
	if pid, ok := p.Running(); ok {
		return pid, false, nil
	}
	if len(p.Match) == 0 || !slices.ContainsFunc(cmd.Args, func(a string) bool { return a == p.Match[0] }) {
		return 0, false, fmt.Errorf("%s: its command %v lacks %v, so it could not be found again", p.Name, cmd.Args, p.Match)
	}
	if err := os.MkdirAll(filepath.Dir(p.LogFile), 0o700); err != nil {
		return 0, false, fmt.Errorf("%s: %w", p.Name, err)
	}
	out, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", p.Name, err)
	}
	defer out.Close()
	from, _ := out.Seek(0, io.SeekEnd)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if start == nil {
		start = (*exec.Cmd).Start
	}
	if err := start(cmd); err != nil {
		return 0, false, fmt.Errorf("%s: start %s: %w", p.Name, cmd.Path, err)
	}
	pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := fsutil.WriteFile(p.PidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644, 0o700); err != nil {
		_ = cmd.Process.Kill()
		return 0, false, fmt.Errorf("%s: %w", p.Name, err)
	}
	deadline := time.After(timeout)
	for {
		if p.logSince(from, readyLine) {
			return pid, true, nil
		}
		select {
		case err := <-exited:
			os.Remove(p.PidFile)
			return 0, false, fmt.Errorf("%s exited at start (%v); its log %s ends:\n%s", p.Name, err, p.LogFile, p.tail(from))
		case <-deadline:
			_ = cmd.Process.Kill()
			os.Remove(p.PidFile)
			return 0, false, fmt.Errorf("%s did not say %q within %s; its log %s ends:\n%s", p.Name, readyLine, timeout, p.LogFile, p.tail(from))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p Process) logSince(from int64, line string) bool {
	data, err := os.ReadFile(p.LogFile)
	return err == nil && int64(len(data)) >= from && bytes.Contains(data[from:], []byte(line))
}

// tail is the last lines the process wrote since from.
func (p Process) tail(from int64) string {
	data, err := os.ReadFile(p.LogFile)
	if err != nil || int64(len(data)) < from {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data[from:]), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// Stop stops the process if it runs: SIGTERM, then SIGKILL after grace.
// stopped says whether it ran. The pid file goes either way.
func (p Process) Stop(grace time.Duration) (stopped bool, err error) {
	defer os.Remove(p.PidFile)
	pid, ok := p.Running()
	if !ok {
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("%s pid %d: %w", p.Name, pid, err)
	}
	for end := time.Now().Add(grace); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !p.is(pid) {
			return true, nil
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("%s pid %d: %w", p.Name, pid, err)
	}
	for end := time.Now().Add(grace); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !p.is(pid) {
			return true, nil
		}
	}
	return true, fmt.Errorf("%s pid %d still runs after SIGKILL", p.Name, pid)
}
