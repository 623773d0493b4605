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
	"sort"
	"strconv"
	"time"

	"github.com/kubelab/kubelab/internal/configserver"
	"github.com/kubelab/kubelab/internal/daemon"
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
// has one. It says serveReady on out once it listens (StartServe waits for
// that). Every fetch is appended to the fetch log in the lab directory, and
// to out.
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
	fmt.Fprintf(out, "%s %d nodes on http://%s (fetch log %s)\n", serveReady, len(entries), addr, l.ServeFetchLog())
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

// serveReady is what the config server prints once it listens.
const serveReady = "config server: serving"

func serveProcess(l Layout) daemon.Process {
	return daemon.Process{Name: "config server", PidFile: l.ServePidFile(),
		LogFile: filepath.Join(l.Serve(), "serve.log"), Match: ServeArgs(l, 0)[:4]}
}

// ServeRunning returns the pid of the lab's config server if it runs.
func ServeRunning(l Layout) (int, bool) { return serveProcess(l).Running() }

// StartServe starts the lab's config server as a background process (exe
// with ServeArgs, in its own session, output to serve/serve.log) unless it
// runs already, and waits until it listens. started says whether this call
// started it.
func StartServe(l Layout, exe string, port int) (pid int, started bool, err error) {
	return serveProcess(l).Start(exec.Command(exe, ServeArgs(l, port)...), serveReady, 30*time.Second, nil)
}

// StopServe stops the lab's config server if it runs. stopped says
// whether one ran.
func StopServe(l Layout) (stopped bool, err error) { return serveProcess(l).Stop(5 * time.Second) }

// startServe is up's serve phase. With network.configServer the config
// server must run before the nodes boot: a first boot fetches from it. It
// is started again when it runs already, so that it serves what the
// render phase just wrote (nodes added since, configs changed). Without
// network.configServer a server left running is stopped.
func (e *Env) startServe(ctx context.Context) error {
	if !e.Plan.Network.ConfigServer {
		if stopped, err := StopServe(e.Layout); err != nil || !stopped {
			return err
		}
		fmt.Fprintln(e.out(), "    config server stopped (network.configServer is off)")
		return nil
	}
	if e.Exe == "" {
		return errors.New("config server: no kubelab binary to run it as")
	}
	// Made here before the server reads them, so the URLs on the nodes'
	// command lines and the server agree whichever asks first.
	if _, err := e.serveTokens(); err != nil {
		return err
	}
	if _, err := StopServe(e.Layout); err != nil {
		return err
	}
	pid, _, err := StartServe(e.Layout, e.Exe, e.Plan.Network.ConfigServerPort)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out(), "    config server pid %d on http://%s:%d; fetch log %s\n", pid, e.Plan.Network.Gateway, e.Plan.Network.ConfigServerPort, e.Layout.ServeFetchLog())
	return nil
}
