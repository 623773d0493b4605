package qemu_test

import (
	"context"
	"fmt"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/driver/qemu"
	"github.com/kubelab/kubelab/internal/versions"
)

// How the lifecycle brings one node up: create (idempotent), remember the
// console size, start (a no-op when it runs), wait for the readiness
// marker of this boot.
func Example() {
	var d driver.Driver = qemu.New(qemu.Options{})
	m := driver.Machine{
		Lab: "lab", Name: "c1-cp-1", Dir: "/root/.kubelab/lab/clusters/c1/nodes/cp-1",
		CPUs: 1, MemoryMiB: 2048, DiskGiB: 20,
		BaseImage: "/root/.kubelab/lab/images/kubelab/disk.qcow2",
		Kernel:    "/root/.kubelab/lab/images/kubelab/vmlinuz",
		Initrd:    "/root/.kubelab/lab/images/kubelab/initrd.img",
		Cmdline:   "root=/dev/vda rw console=ttyS0 mitigations=off net.ifnames=0 cloud-init=disabled",
		MAC:       "00:16:3e:4e:31:10", Tap: "kl-lab-10", Netns: "kubelab-lab",
		Config: driver.Config{Kind: driver.ConfigOverlay, Path: "/root/.kubelab/lab/clusters/c1/nodes/cp-1/overlay.tar"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := d.Create(ctx, m); err != nil {
		fmt.Println(err)
		return
	}
	console := d.ConsolePath(m)
	from := driver.ConsoleSize(console)
	if err := d.Start(ctx, m); err != nil {
		fmt.Println(err)
		return
	}
	alive := func() bool { st, _ := d.State(ctx, m); return st == driver.StateRunning }
	if err := driver.WaitConsole(ctx, console, from, versions.ReadyMarker+" cp-1", alive); err != nil {
		fmt.Println(err)
	}
	if a, ok := d.(driver.Accelerated); ok {
		accel, _ := a.Accelerator(ctx)
		fmt.Println("accelerator:", accel)
	}
}
