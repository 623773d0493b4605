package hostnet

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (hack/install-deps.sh installs it)", name)
		}
		t.Skipf("%s not found", name)
	}
	return p
}

// TestQEMUAttachesToTap runs QEMU the way the driver does (inside the lab's
// namespace, -netdev tap,ifname=...,script=no) against a tap made by Apply
// and checks that it attaches: the tap gets carrier while QEMU holds it.
func TestQEMUAttachesToTap(t *testing.T) {
	requireNetAdmin(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	requireTool(t, "ip")
	_, host := newNS(t, "host")
	labName, _ := newNS(t, "lab")
	c := testConfig(t, labName)
	apply(t, host, c)
	tap := TapName(c.Network.Bridge, c.Nodes[0], c.Network)

	cmd := exec.Command("ip", "netns", "exec", labName, qemu,
		"-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no,vhost=off")
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})

	st := State{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if st, err = showIn(t, host, c); err != nil {
			t.Fatal(err)
		}
		if st.Taps[0].Carrier || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !st.Taps[0].Carrier || !st.Taps[0].Attached {
		t.Fatalf("tap %s not in use by QEMU: %+v\nqemu: %s", tap, st.Taps[0], out.String())
	}
	if st.Taps[1].Carrier {
		t.Errorf("tap %s in use though no QEMU holds it", st.Taps[1].Name)
	}
	// Remove works with QEMU still attached (destroy may run before every
	// VM is gone).
	remove(t, host, c)
	if st, _ := showIn(t, host, c); st.Taps[0].Exists || st.Bridge.Exists {
		t.Errorf("after Remove: %s", st.Text())
	}
}

func showIn(t *testing.T, host netns.NsHandle, c Config) (State, error) {
	t.Helper()
	var st State
	err := runIn(t, host, func() (err error) { st, err = Show(context.Background(), c); return err })
	return st, err
}

// lockedBuffer collects a process's output written from another goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
