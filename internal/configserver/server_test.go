package configserver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type fixture struct {
	srv      *Server
	log      *bytes.Buffer
	cp1, w1  Entry
	ignition []byte
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	dir := t.TempDir()
	ign := []byte(`{"ignition":{"version":"3.4.0"}}`)
	for name, data := range map[string][]byte{"cp1.ign": ign, "w1.ign": []byte(`{"w1":true}`), "w1-user-data": []byte("#cloud-config\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	token := func() string {
		tok, err := NewToken()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cp1 := Entry{Cluster: "k1", Node: "cp1", Addr: netip.MustParseAddr("192.168.100.10"), Token: token(),
		Files: map[string]string{"config.ign": filepath.Join(dir, "cp1.ign"), "gone": filepath.Join(dir, "missing")}}
	w1 := Entry{Cluster: "k1", Node: "w1", Addr: netip.MustParseAddr("192.168.100.11"), Token: token(),
		Files: map[string]string{"config.ign": filepath.Join(dir, "w1.ign"), "user-data": filepath.Join(dir, "w1-user-data")}}
	log := &bytes.Buffer{}
	srv, err := New(netip.MustParsePrefix("192.168.100.0/24"), []Entry{cp1, w1}, log)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{srv: srv, log: log, cp1: cp1, w1: w1, ignition: ign}
}

func (f fixture) do(method, target, remote string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = remote
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, r)
	return w
}

func TestServe(t *testing.T) {
	f := newFixture(t)
	cp1Path := "/k1/cp1/" + f.cp1.Token + "/config.ign"
	wrong := strings.Repeat("0", len(f.cp1.Token))
	for _, tc := range []struct {
		name, method, path, remote string
		status                     int
		body                       string
	}{
		{"own file", "GET", cp1Path, "192.168.100.10:40000", 200, string(f.ignition)},
		{"head", "HEAD", cp1Path, "192.168.100.10:40000", 200, ""},
		{"other node's path from cp1, right token", "GET", "/k1/w1/" + f.w1.Token + "/config.ign", "192.168.100.10:40000", 404, ""},
		{"other node's path, cp1's token", "GET", "/k1/w1/" + f.cp1.Token + "/config.ign", "192.168.100.11:40000", 404, ""},
		{"wrong token", "GET", "/k1/cp1/" + wrong + "/config.ign", "192.168.100.10:40000", 404, ""},
		{"short token", "GET", "/k1/cp1/" + f.cp1.Token[:8] + "/config.ign", "192.168.100.10:40000", 404, ""},
		{"listing of the root", "GET", "/", "192.168.100.10:40000", 404, ""},
		{"listing of a cluster", "GET", "/k1/", "192.168.100.10:40000", 404, ""},
		{"listing of a node", "GET", "/k1/cp1/" + f.cp1.Token + "/", "192.168.100.10:40000", 404, ""},
		{"traversal", "GET", "/k1/cp1/" + f.cp1.Token + "/../../../etc/passwd", "192.168.100.10:40000", 404, ""},
		{"encoded traversal", "GET", "/k1/cp1/" + f.cp1.Token + "/..%2f..%2fcp1.ign", "192.168.100.10:40000", 404, ""},
		{"unknown file", "GET", "/k1/cp1/" + f.cp1.Token + "/user-data", "192.168.100.10:40000", 404, ""},
		{"unknown node", "GET", "/k1/cp9/" + f.cp1.Token + "/config.ign", "192.168.100.10:40000", 404, ""},
		{"source outside the lab network", "GET", cp1Path, "10.0.0.5:40000", 403, ""},
		{"loopback source", "GET", cp1Path, "127.0.0.1:40000", 403, ""},
		{"write", "PUT", cp1Path, "192.168.100.10:40000", 405, ""},
		{"missing file on the host", "GET", "/k1/cp1/" + f.cp1.Token + "/gone", "192.168.100.10:40000", 500, ""},
		{"ipv4-mapped source", "GET", cp1Path, "[::ffff:192.168.100.10]:40000", 200, string(f.ignition)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := f.do(tc.method, tc.path, tc.remote)
			if w.Code != tc.status {
				t.Fatalf("%s %s from %s: status %d, want %d", tc.method, tc.path, tc.remote, w.Code, tc.status)
			}
			if tc.status == 200 && w.Body.String() != tc.body {
				t.Errorf("body %q, want %q", w.Body, tc.body)
			}
			if tc.status != 200 && strings.Contains(w.Body.String(), "ignition") {
				t.Errorf("a refused request got content: %q", w.Body)
			}
		})
	}
	if strings.Contains(f.log.String(), f.cp1.Token) || strings.Contains(f.log.String(), f.w1.Token) {
		t.Errorf("a token is in the fetch log:\n%s", f.log)
	}
}

// Every request is one log line naming the node, the path without its
// token, and the status.
func TestFetchLog(t *testing.T) {
	f := newFixture(t)
	f.do("GET", "/k1/w1/"+f.w1.Token+"/user-data", "192.168.100.11:5000")
	// A wrong token shaped like one (a mistyped right one) is not logged
	// either.
	f.do("GET", "/k1/w1/"+strings.Repeat("5", len(f.w1.Token))+"/user-data", "192.168.100.11:5001")
	f.do("GET", "/k1/w1/"+f.w1.Token+"/user-data", "172.16.0.1:5002")
	var got []Fetch
	sc := bufio.NewScanner(f.log)
	for sc.Scan() {
		var l Fetch
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		got = append(got, l)
	}
	if len(got) != 3 {
		t.Fatalf("%d log lines, want 3:\n%s", len(got), f.log)
	}
	want := []Fetch{
		{Remote: "192.168.100.11:5000", Method: "GET", Path: "/k1/w1/<token>/user-data", Node: "k1/w1", Status: 200, Bytes: int64(len("#cloud-config\n"))},
		{Remote: "192.168.100.11:5001", Method: "GET", Path: "/k1/w1/<token>/user-data", Node: "k1/w1", Status: 404, Reason: "wrong token"},
		{Remote: "172.16.0.1:5002", Method: "GET", Path: "/k1/w1/<token>/user-data", Status: 403, Reason: "source outside the lab network"},
	}
	for i := range want {
		g := got[i]
		if g.Time.IsZero() {
			t.Errorf("line %d has no time", i)
		}
		g.Time = want[i].Time
		if g != want[i] {
			t.Errorf("line %d:\n got %+v\nwant %+v", i, g, want[i])
		}
	}
}

func TestNewRefuses(t *testing.T) {
	tok, _ := NewToken()
	good := Entry{Cluster: "k1", Node: "cp1", Addr: netip.MustParseAddr("192.168.100.10"), Token: tok, Files: map[string]string{"config.ign": "/x"}}
	network := netip.MustParsePrefix("192.168.100.0/24")
	for _, tc := range []struct {
		name    string
		entries func() []Entry
		want    string
	}{
		{"address outside the network", func() []Entry { e := good; e.Addr = netip.MustParseAddr("10.0.0.1"); return []Entry{e} }, "not in the lab network"},
		{"short token", func() []Entry { e := good; e.Token = "abc"; return []Entry{e} }, "token shorter"},
		{"slash in a node name", func() []Entry { e := good; e.Node = "a/b"; return []Entry{e} }, "contain no /"},
		{"empty cluster", func() []Entry { e := good; e.Cluster = ""; return []Entry{e} }, "non-empty"},
		{"a file name with a path", func() []Entry { e := good; e.Files = map[string]string{"../x": "/x"}; return []Entry{e} }, "one path element"},
		{"twice", func() []Entry { return []Entry{good, good} }, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(network, tc.entries(), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(network, []Entry{good}, io.Discard); err != nil {
		t.Fatalf("a good entry refused: %v", err)
	}
}

func TestEntryURL(t *testing.T) {
	e := Entry{Cluster: "k1", Node: "w2", Token: "t0k"}
	if got, want := e.URL("192.168.100.1", "config.ign"), "http://192.168.100.1/k1/w2/t0k/config.ign"; got != want {
		t.Errorf("URL %q, want %q", got, want)
	}
}

// A real HTTP round trip through a listener, as a node would fetch.
func TestServeOverHTTP(t *testing.T) {
	f := newFixture(t)
	// httptest's listener is on loopback, outside the lab network: the
	// server must refuse it.
	ts := httptest.NewServer(f.srv)
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/k1/cp1/" + f.cp1.Token + "/config.ign")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("loopback fetch: status %d, want 403", resp.StatusCode)
	}
}

// Whatever the path and source, the server answers 200 only to the exact
// path of a node's file from that node's address, and never logs a token.
func FuzzServe(f *testing.F) {
	f.Add("/k1/cp1/TOKEN/config.ign", "192.168.100.10:1")
	f.Add("/k1/cp1/TOKEN/../w1/config.ign", "192.168.100.11:1")
	f.Add("//k1//cp1/TOKEN/config.ign", "192.168.100.10:1")
	f.Add("/k1/w1/TOKEN/user-data?x=1", "[::1]:1")
	f.Fuzz(func(t *testing.T, target, remote string) {
		fx := newFixture(t)
		target = strings.ReplaceAll(target, "TOKEN", fx.cp1.Token)
		r, err := http.NewRequest("GET", "http://server"+target, nil)
		if err != nil || !strings.HasPrefix(r.URL.Path, "/") {
			return
		}
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		fx.srv.ServeHTTP(w, r)
		if w.Code == 200 {
			own := "/k1/cp1/" + fx.cp1.Token + "/config.ign"
			if r.URL.Path != own || !strings.HasPrefix(remote, "192.168.100.10:") && !strings.HasPrefix(remote, "[::ffff:192.168.100.10]:") {
				t.Fatalf("200 for %q from %q", r.URL.Path, remote)
			}
		}
		// Nor most of one: a percent escape can eat its first digits.
		if strings.Contains(fx.log.String(), fx.cp1.Token[4:]) {
			t.Fatalf("token logged for %q: %s", target, fx.log)
		}
	})
}
