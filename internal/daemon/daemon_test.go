package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testProcess(t *testing.T) (Process, string) {
	b := make([]byte, 4)
	rand.Read(b)
	name := "kltest-daemon-" + hex.EncodeToString(b)
	dir := t.TempDir()
	return Process{Name: "test server", PidFile: filepath.Join(dir, "run", "p.pid"), LogFile: filepath.Join(dir, "run", "p.log"), Match: []string{name}}, name
}

// A shell loop named by its $0 stands in for a server.
func server(name, script string) *exec.Cmd {
	return exec.Command("sh", "-c", script, name)
}

func TestStartFindStop(t *testing.T) {
	p, name := testProcess(t)
	pid, started, err := p.Start(server(name, "echo starting; sleep 0.2; echo listening; while :; do sleep 1; done"), "listening", 10*time.Second, nil)
	if err != nil || !started {
		t.Fatalf("start: %v started=%v", err, started)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	if got, ok := p.Running(); !ok || got != pid {
		t.Fatalf("Running: %d %v, want %d", got, ok, pid)
	}
	// Never twice.
	again, started, err := p.Start(server(name, "echo listening; while :; do sleep 1; done"), "listening", 10*time.Second, nil)
	if err != nil || started || again != pid {
		t.Fatalf("second start: pid %d started %v err %v, want the first (%d)", again, started, err, pid)
	}
	stopped, err := p.Stop(2 * time.Second)
	if err != nil || !stopped {
		t.Fatalf("stop: %v %v", stopped, err)
	}
	if data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); len(data) > 0 {
		t.Errorf("pid %d still runs: %q", pid, data)
	}
	if _, err := os.Stat(p.PidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left: %v", err)
	}
	if stopped, err := p.Stop(time.Second); stopped || err != nil {
		t.Errorf("stop of a stopped server: %v %v", stopped, err)
	}
}

// A server that ignores SIGTERM is killed.
func TestStopKills(t *testing.T) {
	p, name := testProcess(t)
	pid, _, err := p.Start(server(name, "trap '' TERM; echo listening; while :; do sleep 0.1; done"), "listening", 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if stopped, err := p.Stop(300 * time.Millisecond); !stopped || err != nil {
		t.Fatalf("stop: %v %v", stopped, err)
	}
	if p.is(pid) {
		t.Errorf("pid %d survived SIGKILL", pid)
	}
}

func TestStartFailures(t *testing.T) {
	p, name := testProcess(t)
	_, _, err := p.Start(server(name, "echo 'bind: address already in use' >&2; exit 3"), "listening", 10*time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "exited at start") || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("exiting server: %v, want its log in the error", err)
	}
	if _, err := os.Stat(p.PidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after a failed start: %v", err)
	}
	_, _, err = p.Start(server(name, "while :; do sleep 1; done"), "listening", 500*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "did not say") {
		t.Errorf("silent server: %v", err)
	}
	if _, _, err := p.Start(exec.Command("sleep", "1"), "x", time.Second, nil); err == nil || !strings.Contains(err.Error(), "could not be found again") {
		t.Errorf("a command without the match: %v", err)
	}
}

// A pid file naming another live process (a reused pid) is not the server.
func TestStalePidFile(t *testing.T) {
	p, _ := testProcess(t)
	os.MkdirAll(filepath.Dir(p.PidFile), 0o700)
	os.WriteFile(p.PidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if pid, ok := p.Running(); ok {
		t.Fatalf("this test (pid %d) taken for the server", pid)
	}
	if stopped, err := p.Stop(time.Second); stopped || err != nil {
		t.Errorf("stop with a stale pid file: %v %v", stopped, err)
	}
}
