package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/kubelab/kubelab/internal/nodeconfig"
	"github.com/kubelab/kubelab/internal/plan"
)

// changeTar packs a change's files and unit files for `tar -x -C /` on the
// node: modes and owners as the configuration says, nothing else.
func changeTar(ch nodeconfig.Change) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(path string, mode uint32, owner, group string, data []byte) error {
		return writeTarFile(tw, strings.TrimPrefix(path, "/"), int64(mode), owner, group, data)
	}
	for _, f := range ch.Files {
		if err := add(f.Path, f.Mode, f.Owner, f.Group, f.Contents); err != nil {
			return nil, err
		}
	}
	for _, u := range ch.Units {
		if err := add(nodeconfig.UnitPath(u), 0o644, "root", "root", []byte(u.Contents)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeTarFile(tw *tar.Writer, name string, mode int64, owner, group string, data []byte) error {
	if owner == "" {
		owner = "root"
	}
	if group == "" {
		group = "root"
	}
	h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)),
		Uname: owner, Gname: group, Format: tar.FormatPAX}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	_, err := tw.Write(data)
	return err
}

// deliverScript unpacks the change and restarts what reads it. tar
// replaces each file (unlink, then create); the components that read
// them read them again only when restarted, after all are in place.
func deliverScript(ch nodeconfig.Change) string {
	var b strings.Builder
	b.WriteString("set -e; umask 077; tar -x -p --same-owner --no-overwrite-dir -C / -f -\n")
	if len(ch.Units) > 0 {
		b.WriteString("systemctl daemon-reload\n")
	}
	// The node's clock at the restart: what the restarted components
	// stamp (leases, health) is compared with it, on the same clock. The
	// main PIDs before it tell the new processes from the old ones.
	b.WriteString("echo restarted-at $(date +%s.%N)\n")
	for _, u := range ch.Restart {
		fmt.Fprintf(&b, "echo pid %s $(systemctl show -P MainPID %s)\n", u, u)
	}
	if len(ch.Restart) > 0 {
		// --no-block: the controller manager's start waits for the API
		// server, which kubelab waits for itself, with progress.
		fmt.Fprintf(&b, "systemctl restart --no-block %s\n", strings.Join(ch.Restart, " "))
	}
	b.WriteString("echo delivered\n")
	return b.String()
}

// restart is when a node's units were restarted (node clock) and the main
// PIDs they had before.
type restart struct {
	at      time.Time
	oldPIDs map[string]string
}

// deliver puts a change on a running node over ssh and restarts the units
// that read what changed. It returns when systemd has the restarts queued.
func (e *Env) deliver(ctx context.Context, n plan.Node, ch nodeconfig.Change) (restart, error) {
	r := restart{oldPIDs: map[string]string{}}
	data, err := changeTar(ch)
	if err != nil {
		return r, fmt.Errorf("node %s: %w", n.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	args := e.SSHArgs(n, deliverScript(ch))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "delivered") {
		return r, fmt.Errorf("deliver %d files to node %s (%s): %v\n%s", len(ch.Files)+len(ch.Units), n.Name, n.Address, err, strings.TrimSpace(string(out)))
	}
	var sec float64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "restarted-at "); ok {
			if _, err := fmt.Sscanf(v, "%f", &sec); err != nil {
				return r, fmt.Errorf("node %s: unreadable clock %q", n.Name, v)
			}
		}
		if f := strings.Fields(line); len(f) == 3 && f[0] == "pid" {
			r.oldPIDs[f[1]] = f[2]
		}
	}
	if sec == 0 {
		return r, fmt.Errorf("node %s did not say its clock:\n%s", n.Name, out)
	}
	r.at = time.Unix(0, int64(sec*1e9))
	return r, nil
}

// waitNewProcess waits until systemd runs unit with a main PID other than
// the one it had before the restart.
func (e *Env) waitNewProcess(ctx context.Context, n plan.Node, unit, oldPID string) error {
	return poll(ctx, 3*time.Second, func(ctx context.Context) error {
		out, err := e.sshOutput(ctx, n, "systemctl show -P MainPID "+unit)
		if err != nil {
			return err
		}
		if pid := strings.TrimSpace(out); pid == "0" || pid == oldPID {
			e.Progress.Status(n.Name, fmt.Sprintf("%s: waiting for its new process (main PID %s)", unit, pid))
			return fmt.Errorf("%s has main PID %s, not a new process yet", unit, pid)
		}
		return nil
	})
}

// sshOutput runs a command on a node and returns its standard output.
func (e *Env) sshOutput(ctx context.Context, n plan.Node, command string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := e.SSHArgs(n, command)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ssh %s %q: %v: %s", n.Name, command, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// nodeFiles asks a node for the hash, mode and owners of each path it
// holds; paths it lacks are absent from the answer.
func (e *Env) nodeFiles(ctx context.Context, n plan.Node, paths []string) (map[string]nodeconfig.FileState, error) {
	script, err := nodeFilesScript(paths)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	out, err := e.sshOutput(ctx, n, script)
	if err != nil {
		return nil, err
	}
	return parseNodeFiles(out)
}

// nodeFilesScript prints "sha256 mode owner group path" per existing
// regular file, then "end".
func nodeFilesScript(paths []string) (string, error) {
	var script strings.Builder
	script.WriteString("for p in")
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "'\n\t ") {
			return "", fmt.Errorf("unusual path %q", p)
		}
		script.WriteString(" '" + p + "'")
	}
	script.WriteString(`; do [ -f "$p" ] && echo "$(sha256sum < "$p" | cut -d' ' -f1) $(stat -c '%a %U %G' "$p") $p"; done; echo end`)
	return script.String(), nil
}

// parseNodeFiles reads "sha256 mode owner group path" lines up to "end".
func parseNodeFiles(out string) (map[string]nodeconfig.FileState, error) {
	have := map[string]nodeconfig.FileState{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "end" {
			return have, nil
		}
		f := strings.Fields(line)
		var mode uint32
		if len(f) != 5 || len(f[0]) != 64 {
			return nil, fmt.Errorf("unreadable file state %q", line)
		}
		if _, err := fmt.Sscanf(f[1], "%o", &mode); err != nil {
			return nil, fmt.Errorf("unreadable mode in %q", line)
		}
		have[f[4]] = nodeconfig.FileState{SHA256: f[0], Mode: mode, Owner: f[2], Group: f[3]}
	}
	return nil, fmt.Errorf("the file listing ended early:\n%s", out)
}
