package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Accelerator implements driver.Accelerated. The answer is probed once per
// Driver value: KVM is used only when a guest actually runs under it here
// (on some hosts /dev/kvm opens and QEMU starts, but vCPUs hang).
func (d *Driver) Accelerator(ctx context.Context) (string, error) {
	d.probeOnce.Do(func() {
		switch d.opts.Accel {
		case AccelKVM, AccelTCG:
			d.accel = d.opts.Accel
		case "":
			d.accel, d.accelErr = ProbeKVM(ctx, d.opts.QEMU)
		default:
			d.accelErr = fmt.Errorf("qemu: unknown accelerator %q (kvm or tcg)", d.opts.Accel)
		}
	})
	return d.accel, d.accelErr
}

// probeTimeout bounds the KVM probe; the firmware reaches its end in well
// under a second even under TCG.
const probeTimeout = 5 * time.Second

// ProbeKVM boots the firmware alone (no disk, no NIC) under KVM, with the
// CPU model nodes get and its debug console on a file, and answers "kvm"
// when the firmware gets to the end of its boot ("No bootable device"),
// else "tcg". It only errors when QEMU itself cannot be run.
func ProbeKVM(ctx context.Context, qemu string) (string, error) {
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
	log := filepath.Join(dir, "debugcon.log")
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	// -cpu host as the nodes get it: on some hosts the firmware runs under
	// KVM with QEMU's default CPU model, but setting the host model's MSRs
	// fails (QEMU aborts), so only the real model proves KVM usable.
	cmd := exec.CommandContext(ctx, bin, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "16",
		"-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
		"-chardev", "file,id=dbg,path="+optEscape(log), "-device", "isa-debugcon,iobase=0x402,chardev=dbg")
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("qemu: kvm probe: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() { _ = cmd.Process.Kill(); <-done }()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if data, err := os.ReadFile(log); err == nil && bytes.Contains(data, []byte("No bootable device")) {
			return AccelKVM, nil
		}
		select {
		case <-done:
			return AccelTCG, nil
		case <-ctx.Done():
			return AccelTCG, nil
		case <-t.C:
		}
	}
}
