package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/plan"
)

// SSHArgs is the ssh command line that logs in to node as root with the
// lab's key and the node's pinned host key: no prompts, no trust on first
// use. command, if any, runs on the node.
func (e *Env) SSHArgs(n plan.Node, command ...string) []string {
	args := []string{"ssh", "-i", e.Layout.SSHKey(), "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + e.Layout.KnownHosts(), "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
		"-o", "ConnectTimeout=10", "root@" + n.Address.String()}
	return append(args, command...)
}

// stepClockScript waits for the host's time on stdin and sets the node's
// clock to it. The host sends the time only after the node said "ready",
// so the ssh handshake (seconds under emulation) does not make it late.
const stepClockScript = `echo ready; read t && date -u -s "@$t" >/dev/null && echo stepped`

// stepClock sets a node's wall clock to the host's. A guest restored from a
// saved state (snapshot, suspend) wakes with the clock it had when saved;
// its kubelet, leases and certificates checks need the real time.
func (e *Env) stepClock(ctx context.Context, n plan.Node) error {
	var last error
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("step the clock of %s: %w (last: %v)", n.Name, ctx.Err(), last)
			case <-time.After(5 * time.Second):
			}
		}
		if last = e.stepClockOnce(ctx, n); last == nil {
			return nil
		}
	}
	return fmt.Errorf("step the clock of %s: %w", n.Name, last)
}

func (e *Env) stepClockOnce(ctx context.Context, n plan.Node) error {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	args := e.SSHArgs(n, stepClockScript)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	lines := bufio.NewScanner(stdout)
	result := func() error {
		if !lines.Scan() || lines.Text() != "ready" {
			return fmt.Errorf("ssh %s: no answer: %s", n.Address, strings.TrimSpace(stderr.String()))
		}
		now := time.Now()
		if _, err := fmt.Fprintf(stdin, "%d.%09d\n", now.Unix(), now.Nanosecond()); err != nil {
			return err
		}
		if !lines.Scan() || lines.Text() != "stepped" {
			return fmt.Errorf("ssh %s: date did not set the clock: %s", n.Address, strings.TrimSpace(stderr.String()))
		}
		return nil
	}()
	stdin.Close()
	_, _ = io.Copy(io.Discard, stdout)
	if werr := cmd.Wait(); result == nil && werr != nil {
		result = fmt.Errorf("ssh %s: %w: %s", n.Address, werr, strings.TrimSpace(stderr.String()))
	}
	return result
}
