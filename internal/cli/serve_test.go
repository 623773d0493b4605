package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kubelab/kubelab/internal/lab"
)

// TestMain lets the test binary stand in for kubelab when a command starts
// kubelab again (serve's background process).
func TestMain(m *testing.M) {
	if os.Getenv("KLTEST_KUBELAB_MAIN") == "1" {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestServeCommand runs the config server as `up` will: in the background,
// in the lab's namespace, on the gateway. A stand-in node (a namespace with
// w1's address on the lab bridge, curl) fetches its NoCloud data;
// another node's path, a wrong token and a listing get 404; a second start
// finds the first; destroy leaves no process and no pid file.
func TestServeCommand(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl (apt-get install curl): %v", err)
	}
	dir, run := initLab(t)
	b := make([]byte, 3)
	rand.Read(b)
	labNS := "kltest-" + hex.EncodeToString(b) + "-serve"
	specPath := filepath.Join(dir, "lab.yaml")
	data, _ := os.ReadFile(specPath)
	data = bytes.Replace(data, []byte("  cidr: 192.168.100.0/24\n"), []byte("  cidr: 192.168.100.0/24\n  namespace: "+labNS+"\n"), 1)
	data = bytes.Replace(data, []byte("provisioning: overlay "), []byte("provisioning: cloud-init "), 1)
	if err := os.WriteFile(specPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, e, code := run("render"); code != 0 {
		t.Fatalf("render: %s", e)
	}
	inTestNamespace(t, func() {
		if _, e, code := run("hostnet", "apply"); code != 0 {
			t.Errorf("hostnet apply: %s", e)
			return
		}
		defer run("hostnet", "remove")
		t.Setenv("KLTEST_KUBELAB_MAIN", "1")
		out, e, code := run("serve")
		if code != 0 || !strings.Contains(out, "config server started") {
			t.Errorf("serve (code %d): %s%s", code, out, e)
			return
		}
		defer run("serve", "--stop")
		if out, _, _ := run("serve"); !strings.Contains(out, "runs already") {
			t.Errorf("second serve: %s", out)
		}

		// The stand-in node w1: a namespace on the lab bridge with w1's
		// address.
		vm := "kltest-" + hex.EncodeToString(b) + "-w1"
		if out, err := exec.Command("ip", "netns", "add", vm).CombinedOutput(); err != nil {
			t.Errorf("ip netns add: %v %s", err, out)
			return
		}
		defer netns.DeleteNamed(vm)
		labH, _ := netns.GetFromName(labNS)
		defer labH.Close()
		vmH, _ := netns.GetFromName(vm)
		defer vmH.Close()
		lh, _ := netlink.NewHandleAt(labH)
		defer lh.Delete()
		vh, _ := netlink.NewHandleAt(vmH)
		defer vh.Delete()
		if err := lh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "w1port"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(vmH))}); err != nil {
			t.Errorf("veth: %v", err)
			return
		}
		port, _ := lh.LinkByName("w1port")
		links, _ := lh.LinkList()
		for _, l := range links {
			if l.Type() == "bridge" {
				lh.LinkSetMaster(port, l)
			}
		}
		lh.LinkSetUp(port)
		eth0, _ := vh.LinkByName("eth0")
		addr, _ := netlink.ParseAddr("192.168.100.11/24")
		vh.AddrAdd(eth0, addr)
		vh.LinkSetUp(eth0)

		tokens := map[string]string{}
		tdata, err := os.ReadFile(filepath.Join(dir, "serve", "tokens.json"))
		if err != nil || json.Unmarshal(tdata, &tokens) != nil || len(tokens) != 3 {
			t.Errorf("tokens: %v %s", err, tdata)
			return
		}
		if info, err := os.Stat(filepath.Join(dir, "serve", "tokens.json")); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("tokens.json mode: %v %v", info.Mode(), err)
		}
		// get returns the body and the HTTP status.
		get := func(path string) (string, string) {
			out, err := exec.Command("ip", "netns", "exec", vm, curl, "-sS", "--max-time", "10", "-w", "\n%{http_code}", "http://192.168.100.1"+path).CombinedOutput()
			if err != nil {
				return string(out), err.Error()
			}
			i := strings.LastIndexByte(string(out), '\n')
			return string(out[:i]), string(out[i+1:])
		}
		want, _ := os.ReadFile(filepath.Join(dir, "clusters", "k1", "nodes", "w1", lab.CloudInitDir, "user-data"))
		if got, status := get("/k1/w1/" + tokens["k1/w1"] + "/user-data"); status != "200" || got != string(want) {
			t.Errorf("w1's user-data: %s\n%.200s", status, got)
		}
		for _, refused := range []string{
			"/k1/w2/" + tokens["k1/w2"] + "/user-data", // another node's files, its right token
			"/k1/w1/" + strings.Repeat("0", 32) + "/user-data",
			"/", "/k1/", "/k1/w1/" + tokens["k1/w1"] + "/",
		} {
			if got, status := get(refused); status != "404" {
				t.Errorf("GET %s from w1: %s %q, want 404", refused, status, got)
			}
		}
		log, _ := os.ReadFile(filepath.Join(dir, "serve", "fetch.log"))
		if n := strings.Count(string(log), "\n"); n != 6 {
			t.Errorf("fetch log has %d lines, want 6:\n%s", n, log)
		}
		for _, tok := range tokens {
			if strings.Contains(string(log), tok) {
				t.Errorf("a token is in the fetch log:\n%s", log)
			}
		}
		pidData, err := os.ReadFile(filepath.Join(dir, "serve", "serve.pid"))
		if err != nil {
			t.Errorf("pid file: %v", err)
			return
		}
		pid := strings.TrimSpace(string(pidData))
		// destroy stops it (no VMs run; the user's kubeconfig is a
		// scratch file).
		t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "config"))
		if out, e, code := run("destroy"); code != 0 || !strings.Contains(out, "==> serve") {
			t.Errorf("destroy (code %d): %s%s", code, out, e)
		}
		if _, err := os.Stat("/proc/" + pid + "/cmdline"); err == nil {
			if c, _ := os.ReadFile("/proc/" + pid + "/cmdline"); len(c) > 0 {
				t.Errorf("the config server (pid %s) still runs after destroy", pid)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "serve", "serve.pid")); !os.IsNotExist(err) {
			t.Errorf("pid file left after destroy: %v", err)
		}
	})
}
