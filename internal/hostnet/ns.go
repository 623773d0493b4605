package hostnet

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// inNS runs fn on a fresh OS thread switched into ns. The thread stays
// locked and dies with its goroutine, so no thread in a foreign namespace
// ever goes back to the Go scheduler's pool.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// openNamespace returns a handle on the named namespace, creating it when
// missing; created reports whether this call made it.
func openNamespace(name string) (h netns.NsHandle, created bool, err error) {
	h, err = netns.GetFromName(name)
	if err == nil {
		return h, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return -1, false, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	errc := make(chan error, 1)
	go func() {
		// NewNamed switches the calling thread into the new namespace; the
		// locked thread is discarded when this goroutine ends.
		runtime.LockOSThread()
		nh, err := netns.NewNamed(name)
		if err == nil {
			h = nh
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return -1, false, fmt.Errorf("create network namespace %s (needs root; /run/netns must be writable): %w", name, err)
	}
	return h, true, nil
}

// namespaceExists reports whether /run/netns/name exists.
func namespaceExists(name string) bool {
	h, err := netns.GetFromName(name)
	if err != nil {
		return false
	}
	h.Close()
	return true
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// readIPForward reads net.ipv4.ip_forward as seen from ns; /proc/sys/net
// shows the namespace of the thread that opens it.
func readIPForward(ns netns.NsHandle) (bool, error) {
	var on bool
	err := inNS(ns, func() error {
		b, err := os.ReadFile(ipForwardPath)
		if err != nil {
			return err
		}
		on = strings.TrimSpace(string(b)) == "1"
		return nil
	})
	return on, err
}

func writeIPForward(ns netns.NsHandle, on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	return inNS(ns, func() error {
		if err := os.WriteFile(ipForwardPath, []byte(v), 0o644); err != nil {
			return fmt.Errorf("set net.ipv4.ip_forward=%s: %w", strings.TrimSpace(v), err)
		}
		return nil
	})
}
