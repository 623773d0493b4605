package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubelab/kubelab/internal/configserver"
	"github.com/kubelab/kubelab/internal/fsutil"
	"github.com/kubelab/kubelab/internal/hostnet"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/render/ignition"
	"github.com/kubelab/kubelab/internal/spec"
)

// The config server's files in the lab directory.
func (l Layout) Serve() string         { return filepath.Join(l.Dir, "serve") }
func (l Layout) ServeTokens() string   { return filepath.Join(l.Serve(), "tokens.json") }
func (l Layout) ServeFetchLog() string { return filepath.Join(l.Serve(), "fetch.log") }
func (l Layout) ServePidFile() string  { return filepath.Join(l.Serve(), "serve.pid") }

// IgnitionConfigName is the name a node's Ignition config is served under.
const IgnitionConfigName = "config.ign"

// noCloudFiles are the files of cloud-init's NoCloud data source; over
// HTTP (nocloud-net) it asks for them under the seed URL.
var noCloudFiles = []string{"meta-data", "user-data", "network-config"}

// ServeTokens returns every planned node's config server token
// ("cluster/node" -> token), made on first use and kept in the lab
// directory (0600): a node's token stays the same across renders, so the
// URL on its kernel command line does too. Tokens of nodes no longer
// planned are dropped.
func ServeTokens(l Layout, p *plan.Plan) (map[string]string, error) {
	saved := map[string]string{}
	data, err := os.ReadFile(l.ServeTokens())
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &saved); err != nil {
			return nil, fmt.Errorf("config server tokens %s: %w (delete it to make new tokens)", l.ServeTokens(), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("config server tokens: %w", err)
	}
	tokens := map[string]string{}
	changed := false
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			key := c.Name + "/" + n.Name
			if tok, ok := saved[key]; ok {
				tokens[key] = tok
				continue
			}
			tok, err := configserver.NewToken()
			if err != nil {
				return nil, err
			}
			tokens[key], changed = tok, true
		}
	}
	if len(tokens) != len(saved) {
		changed = true
	}
	if changed {
		out, err := json.MarshalIndent(tokens, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := fsutil.WriteFile(l.ServeTokens(), append(out, '\n'), 0o600, 0o700); err != nil {
			return nil, fmt.Errorf("config server tokens: %w", err)
		}
	}
	return tokens, nil
}

// ServeEntries lists what the config server serves: for each node
// provisioned by Ignition its rendered config as config.ign, for each node
// provisioned by cloud-init its NoCloud files, each only to the node's
// planned address with the node's token. Files not rendered yet are left
// out (render first).
func ServeEntries(l Layout, p *plan.Plan, tokens map[string]string) ([]configserver.Entry, error) {
	var entries []configserver.Entry
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			key := c.Name + "/" + n.Name
			tok, ok := tokens[key]
			if !ok {
				return nil, fmt.Errorf("config server: no token for node %s", key)
			}
			files := map[string]string{}
			dir := l.Node(c.Name, n.Name)
			switch n.Provisioning {
			case spec.ProvisionIgnition:
				files[IgnitionConfigName] = filepath.Join(dir, ignition.FileName)
			case spec.ProvisionCloudInit:
				for _, name := range noCloudFiles {
					files[name] = filepath.Join(dir, CloudInitDir, name)
				}
			}
			for name, path := range files {
				if _, err := os.Stat(path); err != nil {
					delete(files, name)
				}
			}
			if len(files) == 0 {
				continue
			}
			entries = append(entries, configserver.Entry{Cluster: c.Name, Node: n.Name, Addr: n.Address, Token: tok, Files: files})
		}
	}
	sort.Slice(entries, func(i, j int) bool {
		return entries[i].Cluster+"/"+entries[i].Node < entries[j].Cluster+"/"+entries[j].Node
	})
	return entries, nil
}

// DefaultServePort is the config server's port (the guide's nginx on 80).
const DefaultServePort = 80

// Serve runs the config server in the calling process until ctx ends: on
// the lab network's gateway address, inside the lab's namespace when it
// has one. It writes its own pid file once it listens (StartServe waits for
// that) and removes it when it stops. Every fetch is appended to the fetch
// log in the lab directory, and to out.
func Serve(ctx context.Context, l Layout, p *plan.Plan, port int, out io.Writer) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("config server port %d: want 1-65535", port)
	}
	tokens, err := ServeTokens(l, p)
	if err != nil {
		return err
	}
	entries, err := ServeEntries(l, p, tokens)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.Serve(), 0o700); err != nil {
		return fmt.Errorf("config server: %w", err)
	}
	logFile, err := os.OpenFile(l.ServeFetchLog(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("config server: fetch log: %w", err)
	}
	defer logFile.Close()
	srv, err := configserver.New(p.Network.CIDR, entries, io.MultiWriter(logFile, out))
	if err != nil {
		return err
	}
	addr := netip.AddrPortFrom(p.Network.Gateway, uint16(port))
	ln, err := hostnet.ListenTCP(p.Network.Namespace, addr)
	if err != nil {
		return fmt.Errorf("config server: %w", err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	if err := fsutil.WriteFile(l.ServePidFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644, 0o700); err != nil {
		ln.Close()
		return fmt.Errorf("config server: %w", err)
	}
	defer os.Remove(l.ServePidFile())
	fmt.Fprintf(out, "config server: serving %d nodes on http://%s (fetch log %s)\n", len(entries), addr, l.ServeFetchLog())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("config server: %w", err)
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(shutdown)
	}
}

// ServeArgs are the arguments of the background config server process.
func ServeArgs(l Layout, port int) []string {
	return []string{"--dir", l.Dir, "serve", "--foreground", "--port", strconv.Itoa(port)}
}

// ServeRunning finds the lab's config server process: the pid in its pid
// file when that process is this lab's server.
func ServeRunning(l Layout) (int, bool) {
	data, err := os.ReadFile(l.ServePidFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 || !isServeProcess(pid, l) {
		return 0, false
	}
	return pid, true
}

// isServeProcess checks /proc/pid/cmdline, so a pid reused by another
// process is never taken for the server.
func isServeProcess(pid int, l Layout) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	want := ServeArgs(l, 0)[:4] // --dir DIR serve --foreground
	for i := 0; i+len(want) <= len(args); i++ {
		if slices.Equal(args[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

// StartServe starts the lab's config server as a background process
// (exe ServeArgs, in its own session, output to serve/serve.log) unless it
// runs already, and waits until it listens. started says whether this call
// started it.
func StartServe(l Layout, exe string, port int) (pid int, started bool, err error) {
	if pid, ok := ServeRunning(l); ok {
		return pid, false, nil
	}
	if err := os.MkdirAll(l.Serve(), 0o700); err != nil {
		return 0, false, fmt.Errorf("config server: %w", err)
	}
	logPath := filepath.Join(l.Serve(), "serve.log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, false, fmt.Errorf("config server: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(exe, ServeArgs(l, port)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, false, fmt.Errorf("config server: start %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		if pid, ok := ServeRunning(l); ok && pid == cmd.Process.Pid {
			return pid, true, nil
		}
		select {
		case err := <-exited:
			return 0, false, fmt.Errorf("config server exited at start (%v); its log %s ends:\n%s", err, logPath, ConsoleTail(logPath, 10))
		case <-deadline:
			_ = cmd.Process.Kill()
			return 0, false, fmt.Errorf("config server did not listen within 30 s; its log %s ends:\n%s", logPath, ConsoleTail(logPath, 10))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StopServe stops the lab's config server if it runs (SIGTERM, then
// SIGKILL after 5 s) and removes its pid file. stopped says whether one ran.
func StopServe(l Layout) (stopped bool, err error) {
	pid, ok := ServeRunning(l)
	if !ok {
		os.Remove(l.ServePidFile())
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("config server pid %d: %w", pid, err)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if !isServeProcess(pid, l) {
			os.Remove(l.ServePidFile())
			return true, nil
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("config server pid %d: %w", pid, err)
	}
	os.Remove(l.ServePidFile())
	return true, nil
}
