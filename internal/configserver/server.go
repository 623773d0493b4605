// Package configserver is the lab's config server, the "Kubernetes and Xen"
// guide's nginx: it serves each node its own provisioning files (Ignition
// JSON, cloud-init NoCloud data) over HTTP on the lab network.
//
// A node's files are under /<cluster>/<node>/<token>/<file>, where the
// token is a random per-node secret that reaches only that node (on its
// kernel command line or its configuration medium). A request is answered
// only when it comes from the node's own planned address and carries the
// node's token; everything else gets the same 404, so a wrong guess tells
// nothing about which part was wrong, and nothing can be listed. Files are
// looked up by exact name in the node's entry, never joined from the
// request path, so no path reaches outside the served files.
package configserver

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Entry is one node's served files.
type Entry struct {
	Cluster, Node string
	// Addr is the node's planned address: the only source it is served to.
	Addr netip.Addr
	// Token is the node's secret path element (NewToken).
	Token string
	// Files maps a served name (config.ign, user-data, meta-data, ...) to
	// the file on the host that holds it. Files are read per request, so a
	// re-rendered node gets its new configuration.
	Files map[string]string
}

// URL is the address under which entry e's file name is served from
// server (host or host:port).
func (e Entry) URL(server, name string) string {
	return "http://" + server + "/" + path.Join(e.Cluster, e.Node, e.Token, name)
}

// tokenBytes is the tokens' entropy: 128 bits.
const tokenBytes = 16

// NewToken returns a fresh random token.
func NewToken() (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Fetch is one line of the fetch log (JSON lines). The token is never
// logged: Path has it replaced by "<token>".
type Fetch struct {
	Time   time.Time `json:"time"`
	Remote string    `json:"remote"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Node   string    `json:"node,omitempty"`
	Status int       `json:"status"`
	Bytes  int64     `json:"bytes"`
	Reason string    `json:"reason,omitempty"`
}

// Server is an http.Handler serving the entries.
type Server struct {
	network netip.Prefix
	entries map[string]Entry // by "<cluster>/<node>"
	now     func() time.Time

	mu  sync.Mutex
	log io.Writer
}

// New checks the entries and returns a server that answers only sources in
// network and writes one Fetch per request to log.
func New(network netip.Prefix, entries []Entry, log io.Writer) (*Server, error) {
	if !network.IsValid() {
		return nil, fmt.Errorf("config server: no lab network")
	}
	s := &Server{network: network.Masked(), entries: map[string]Entry{}, now: time.Now, log: log}
	for _, e := range entries {
		key := e.Cluster + "/" + e.Node
		switch {
		case e.Cluster == "" || e.Node == "" || strings.Contains(e.Cluster, "/") || strings.Contains(e.Node, "/"):
			return nil, fmt.Errorf("config server: entry %q: cluster and node names must be non-empty and contain no /", key)
		case len(e.Token) < 2*tokenBytes:
			return nil, fmt.Errorf("config server: node %s: token shorter than %d characters", key, 2*tokenBytes)
		case !e.Addr.IsValid() || !s.network.Contains(e.Addr):
			return nil, fmt.Errorf("config server: node %s: address %v is not in the lab network %s", key, e.Addr, s.network)
		}
		if _, dup := s.entries[key]; dup {
			return nil, fmt.Errorf("config server: node %s listed twice", key)
		}
		for name := range e.Files {
			if name == "" || strings.Contains(name, "/") {
				return nil, fmt.Errorf("config server: node %s: file name %q must be one path element", key, name)
			}
		}
		s.entries[key] = e
	}
	return s, nil
}

// ServeHTTP answers GET and HEAD of a node's files, and 404 to everything
// else a lab source asks; sources outside the lab network get 403.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := Fetch{Time: s.now().UTC(), Remote: r.RemoteAddr, Method: r.Method, Path: s.redact(r.URL.Path)}
	status, n := s.serve(w, r, &f)
	f.Status, f.Bytes = status, n
	s.record(f)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, f *Fetch) (int, int64) {
	remote, err := remoteAddr(r.RemoteAddr)
	if err != nil || !s.network.Contains(remote) {
		f.Reason = "source outside the lab network"
		http.Error(w, "forbidden", http.StatusForbidden)
		return http.StatusForbidden, 0
	}
	notFound := func(reason string) (int, int64) {
		f.Reason = reason
		http.NotFound(w, r)
		return http.StatusNotFound, 0
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) != 4 {
		return notFound("not a node file path")
	}
	e, ok := s.entries[parts[0]+"/"+parts[1]]
	if !ok {
		return notFound("no such node")
	}
	f.Node = e.Cluster + "/" + e.Node
	if subtle.ConstantTimeCompare([]byte(parts[2]), []byte(e.Token)) != 1 {
		return notFound("wrong token")
	}
	if remote != e.Addr {
		return notFound("source is not the node's address " + e.Addr.String())
	}
	file, ok := e.Files[parts[3]]
	if !ok {
		return notFound("no such file for the node")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		f.Reason = "method not allowed"
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return http.StatusMethodNotAllowed, 0
	}
	data, err := os.ReadFile(file)
	if err != nil {
		f.Reason = "read " + file + ": " + err.Error()
		http.Error(w, "internal error", http.StatusInternalServerError)
		return http.StatusInternalServerError, 0
	}
	w.Header().Set("Content-Type", contentType(parts[3]))
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return http.StatusOK, 0
	}
	written, _ := w.Write(data)
	return http.StatusOK, int64(written)
}

func (s *Server) record(f Fetch) {
	if s.log == nil {
		return
	}
	line, err := json.Marshal(f)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.log.Write(append(line, '\n'))
}

// redact hides tokens in a request path before it is logged: every known
// token wherever it appears, and any run of 16 or more hex digits (a wrong
// token may be a mistyped right one, and a percent escape in front of a
// token, as in "%13<token>", decodes its first two digits away: the rest
// must not be logged either).
func (s *Server) redact(p string) string {
	for _, e := range s.entries {
		p = strings.ReplaceAll(p, e.Token, "<token>")
	}
	return longHex.ReplaceAllString(p, "<token>")
}

// longHex matches what could be most of a token; lab paths have no other
// long hex runs.
var longHex = regexp.MustCompile(`[0-9a-fA-F]{16,}`)

func remoteAddr(hostport string) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(hostport)
	if err == nil {
		return ap.Addr().Unmap(), nil
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(host)
	return a.Unmap(), err
}

func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".ign"), strings.HasSuffix(name, ".json"):
		return "application/json"
	default:
		return "text/plain; charset=utf-8"
	}
}
