package hostnet

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// ListenTCP listens on addr inside the named network namespace (the host's
// own when namespace is empty); the socket stays in that namespace, so the
// lab's servers live beside its bridge. A taken port is reported with the
// process that holds it, where /proc tells.
func ListenTCP(namespace string, addr netip.AddrPort) (net.Listener, error) {
	var l net.Listener
	listen := func() error {
		var err error
		l, err = net.Listen("tcp", addr.String())
		if errors.Is(err, syscall.EADDRINUSE) {
			// Asked here: /proc/thread-self/net is this thread's namespace.
			err = fmt.Errorf("%w%s", err, portHolder(addr.Port()))
		}
		return err
	}
	where := "this host"
	var err error
	if namespace == "" {
		err = listen()
	} else {
		where = "network namespace " + namespace
		h, nsErr := netns.GetFromName(namespace)
		if nsErr != nil {
			return nil, fmt.Errorf("listen on %s: %s does not exist (is the lab network up? kubelab up): %w", addr, where, nsErr)
		}
		defer h.Close()
		err = inNS(h, listen)
	}
	switch {
	case err == nil:
		return l, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("listen on %s in %s: the port is taken: %w", addr, where, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return nil, fmt.Errorf("listen on %s: no interface in %s has %s (is the lab network up? kubelab up): %w", addr, where, addr.Addr(), err)
	default:
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, where, err)
	}
}

// dhcpPortFree checks, before anything is made, that the lab's dnsmasq
// will get the DHCP server port (UDP 67, on every address: DHCP requests
// are broadcasts) in the lab's namespace (the host's when empty). A
// namespace that does not exist yet is made empty by Apply: nothing holds
// the port there.
func dhcpPortFree(namespace string) error {
	probe := func() error {
		c, err := net.ListenPacket("udp4", "0.0.0.0:67")
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				// Asked here: /proc/thread-self/net is this thread's namespace.
				err = fmt.Errorf("another DHCP server holds UDP port 67%s: %w", socketHolder(67, udpBound, "udp", "udp6"), err)
			}
			return err
		}
		return c.Close()
	}
	if namespace == "" {
		return probe()
	}
	h, err := netns.GetFromName(namespace)
	if err != nil {
		return nil
	}
	defer h.Close()
	return inNS(h, probe)
}

// portHolder names the process listening on TCP port in the calling
// thread's network namespace, as " (held by NAME, pid N)", or "" when /proc
// does not say.
func portHolder(port uint16) string { return socketHolder(port, tcpListen, "tcp", "tcp6") }

// Socket states in /proc/net/tcp and udp: a listening TCP socket, a bound
// unconnected UDP one.
const (
	tcpListen = "0A"
	udpBound  = "07"
)

// socketHolder names the process with a socket in state on port in the
// tables given (/proc/net/tcp, udp, ...).
func socketHolder(port uint16, state string, tables ...string) string {
	inodes := map[string]bool{}
	for _, table := range tables {
		for _, inode := range listeningInodes("/proc/thread-self/net/"+table, port, state) {
			inodes[inode] = true
		}
	}
	if len(inodes) == 0 {
		return ""
	}
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range pids {
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			if inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] {
				comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
				return fmt.Sprintf(" (held by %s, pid %s)", strings.TrimSpace(string(comm)), filepath.Base(dir))
			}
		}
	}
	return ""
}

// listeningInodes reads a /proc/net/tcp or udp table and returns the
// inodes of the sockets in state on the local port.
func listeningInodes(table string, port uint16, state string) []string {
	f, err := os.Open(table)
	if err != nil {
		return nil
	}
	defer f.Close()
	var inodes []string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		if len(fields) < 10 || fields[3] != state {
			continue
		}
		i := strings.LastIndexByte(fields[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(fields[1][i+1:], 16, 16)
		if err == nil && uint16(p) == port {
			inodes = append(inodes, fields[9])
		}
	}
	return inodes
}
