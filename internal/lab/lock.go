package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Lock is an exclusive hold on a lab directory, so two kubelab commands
// never work on the same lab at once. The kernel releases it when the
// process dies, so a crashed or killed command never leaves the lab locked.
type Lock struct{ f *os.File }

// Acquire takes the lab's lock without waiting; when another command holds
// it, the error names that command's PID and what it is doing.
func Acquire(l Layout, command string) (*Lock, error) {
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	path := filepath.Join(l.Dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := strings.TrimSpace(string(holder))
			if who == "" {
				who = "another kubelab command"
			}
			return nil, fmt.Errorf("lab %s is busy: %s is working on it; wait for it to finish (or stop it) and try again", l.Dir, who)
		}
		return nil, fmt.Errorf("lock lab: %w", err)
	}
	// Record who holds it, for the message a second command prints.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte("kubelab "+command+" (pid "+strconv.Itoa(os.Getpid())+")\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
	l.f = nil
}
