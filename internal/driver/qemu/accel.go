package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Accelerator implements driver.Accelerated: "kvm" once a Linux kernel has
// booted under KVM here, else "tcg". The kernel is Options.ProbeKernel, or
// the kernel of a machine this driver started before.
func (d *Driver) Accelerator(ctx context.Context) (string, error) {
	a, err := d.accel.Answer(ctx, d.opts.QEMU, d.opts.Accel, "")
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	return a, nil
}

// probeTimeout bounds the KVM probe: under KVM the kernel reaches its
// root-less panic in about a second (two under TCG, measured here).
const probeTimeout = 10 * time.Second

// KVMProbe answers, once per kernel, whether guests get KVM on this host.
// KVM counts only when a Linux kernel boots under it: some hosts have a
// /dev/kvm on which firmware runs but Linux hangs in its early boot or
// stops with "KVM internal error ... emulation failure" (nested KVM here,
// 2026-12-03). The zero value is ready to use and safe for concurrent use.
type KVMProbe struct {
	// Kernel is the kernel asked about when the caller has none (the lab's
	// image); it may not exist yet.
	Kernel string

	mu      sync.Mutex
	answers map[string]string // kernel path -> "kvm" or "tcg"
	last    string            // the most recent answer for any kernel
}

// Answer is the accelerator for a guest of kernel (empty: p.Kernel, else
// the last kernel answered for). forced ("kvm" or "tcg") wins; with no
// kernel to boot the answer is "tcg": KVM is never assumed unproven.
func (p *KVMProbe) Answer(ctx context.Context, qemu, forced, kernel string) (string, error) {
	switch forced {
	case AccelKVM, AccelTCG:
		return forced, nil
	case "":
	default:
		return "", fmt.Errorf("unknown accelerator %q (kvm or tcg)", forced)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if kernel == "" {
		kernel = p.Kernel
	}
	if a, ok := p.answers[kernel]; ok {
		return a, nil
	}
	if _, err := os.Stat(kernel); kernel == "" || err != nil {
		if p.last != "" {
			return p.last, nil
		}
		return AccelTCG, nil
	}
	cache := probeCacheFile(qemu, kernel)
	a := readProbeCache(cache)
	if a == "" {
		var err error
		if a, err = ProbeKVM(ctx, qemu, kernel); err != nil {
			return "", err
		}
		writeProbeCache(cache, a)
	}
	if p.answers == nil {
		p.answers = map[string]string{}
	}
	p.answers[kernel], p.last = a, a
	return a, nil
}

// probeCacheFile is where a probe's answer is kept for later commands:
// under kubelab's cache directory ($KUBELAB_CACHE, else the user's),
// named by a hash of what the answer depends on (this boot of the host,
// the QEMU binary, the kernel file), so a reboot, an upgrade or a new
// image asks again. Empty when there is no cache directory. A host without
// working KVM would otherwise pay the probe's timeout on every command
// that looks at machines.
func probeCacheFile(qemu, kernel string) string {
	dir := os.Getenv("KUBELAB_CACHE") // as the component cache
	if dir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(d, "kubelab")
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	h := sha256.New()
	fmt.Fprintf(h, "boot %s\n", bytes.TrimSpace(bootID))
	bin, _ := exec.LookPath(qemu)
	for _, f := range []string{bin, kernel} {
		fi, err := os.Stat(f)
		if err != nil {
			return ""
		}
		fmt.Fprintf(h, "%s %d %d\n", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return filepath.Join(dir, "kvm-probe", hex.EncodeToString(h.Sum(nil))[:32])
}

func readProbeCache(path string) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if a := string(bytes.TrimSpace(data)); err == nil && (a == AccelKVM || a == AccelTCG) {
		return a
	}
	return ""
}

// writeProbeCache keeps an answer; failing to is no error (the next
// command probes again).
func writeProbeCache(path, answer string) {
	if path == "" || os.MkdirAll(filepath.Dir(path), 0o755) != nil {
		return
	}
	tmp := path + ".tmp"
	if os.WriteFile(tmp, []byte(answer+"\n"), 0o644) == nil {
		_ = os.Rename(tmp, path)
	}
}

// ProbeKVM boots kernel alone (no initrd, no disk, no NIC) under KVM with
// the CPU model nodes get, and answers "kvm" when it gets to its panic for
// want of a root file system, else "tcg". It only errors when QEMU itself
// cannot be run.
func ProbeKVM(ctx context.Context, qemu, kernel string) (string, error) {
	bin, err := exec.LookPath(qemu)
	if err != nil {
		return "", fmt.Errorf("qemu: %s not found (apt-get install qemu-system-x86, or run hack/install-deps.sh): %w", qemu, err)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, nil
	}
	f.Close()
	dir, err := os.MkdirTemp("", "kubelab-kvm-probe-")
	if err != nil {
		return "", fmt.Errorf("qemu: kvm probe: %w", err)
	}
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	// -cpu host as the nodes get it: on some hosts the firmware runs under
	// KVM with QEMU's default CPU model, but setting the host model's MSRs
	// fails (QEMU aborts), so only the real model proves KVM usable.
	cmd := exec.CommandContext(ctx, bin, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "128",
		"-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 loglevel=4",
		"-chardev", "file,id=con,path="+optEscape(log), "-serial", "chardev:con")
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("qemu: kvm probe: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() { _ = cmd.Process.Kill(); <-done }()
	booted := func() bool {
		data, err := os.ReadFile(log)
		return err == nil && bytes.Contains(data, []byte("Kernel panic - not syncing"))
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if booted() {
			return AccelKVM, nil
		}
		select {
		case <-done:
			if booted() {
				return AccelKVM, nil
			}
			return AccelTCG, nil
		case <-ctx.Done():
			return AccelTCG, nil
		case <-t.C:
		}
	}
}
