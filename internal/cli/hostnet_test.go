package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/kubelab/kubelab/internal/hostnet"
)

// inTestNamespace runs fn on a thread inside a fresh network namespace, so
// the commands' "host" is that namespace and never the machine's.
func inTestNamespace(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to create a network namespace")
		}
		t.Skip("needs root to create a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "kltest-" + hex.EncodeToString(b) + "-cli"
	done := make(chan struct{})
	var nerr error
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.NewNamed(name)
		if err != nil {
			nerr = err
			return
		}
		h.Close()
		fn()
	}()
	<-done
	t.Cleanup(func() { netns.DeleteNamed(name) })
	if nerr != nil {
		t.Fatalf("create namespace %s: %v", name, nerr)
	}
}

// initLab writes a default lab.yaml into a fresh directory and returns it
// with a runner of kubelab commands on it (stdout, stderr, exit code).
func initLab(t *testing.T) (string, func(args ...string) (string, string, int)) {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := Main(append([]string{"--dir", dir}, args...), &out, &errb)
		return out.String(), errb.String(), code
	}
	if _, e, code := run("init"); code != 0 {
		t.Fatalf("init: %s", e)
	}
	return dir, run
}

func TestHostnetCommand(t *testing.T) {
	_, run := initLab(t)
	inTestNamespace(t, func() {
		out, e, code := run("hostnet", "apply", "-o", "json")
		if code != 0 {
			t.Errorf("hostnet apply: %s", e)
			return
		}
		var st hostnet.State
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Errorf("apply -o json: %v\n%s", err, out)
			return
		}
		if !st.Bridge.Exists || len(st.Taps) != 3 || !st.Table.Exists {
			t.Errorf("after apply: %s", out)
		}
		out, e, code = run("hostnet")
		if code != 0 || !strings.Contains(out, "bridge     kl-") || !strings.Contains(out, "dnat to 192.168.100.10:22") {
			t.Errorf("hostnet (code %d, %s):\n%s", code, e, out)
		}
		if _, e, code = run("hostnet", "remove"); code != 0 {
			t.Errorf("hostnet remove: %s", e)
		}
		out, _, _ = run("hostnet", "-o", "json")
		st = hostnet.State{}
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.Bridge.Exists || st.Table.Exists || st.Taps[0].Exists {
			t.Errorf("after remove (%v): %s", err, out)
		}
	})
}
