package driver

import "context"

// StateSuspended: the machine does not run, but its memory and device state
// were saved by Suspend; Start resumes it from that state instead of
// booting it.
const StateSuspended State = "suspended"

// Snapshotter is a driver that can save a machine's whole state (memory,
// devices and a frozen copy of its disk) into files and start it again from
// them, for cluster snapshots. The lifecycle pauses every node of a cluster
// before saving any of them, so the saved states are consistent with each
// other, and resumes them together after a restore.
type Snapshotter interface {
	// Pause stops the guest's CPUs; Resume lets a paused guest run again.
	Pause(ctx context.Context, m Machine) error
	Resume(ctx context.Context, m Machine) error
	// SaveState writes a paused machine's state into dir (which must
	// exist and be empty of it) and leaves the machine paused. It returns
	// the files it wrote, relative to dir.
	SaveState(ctx context.Context, m Machine, dir string) ([]string, error)
	// RestoreState replaces the machine's current state with the one in
	// dir (a running machine is killed, its disk discarded) and starts it
	// paused.
	RestoreState(ctx context.Context, m Machine, dir string) error
	// StateCompatibility names what a saved state is bound to (the
	// hypervisor's version, the accelerator, the machine type): a state
	// saved under one value cannot be restored under another.
	StateCompatibility(ctx context.Context) (string, error)
}

// Suspender is a driver that can save a running machine's state into its
// own directory and stop it; the next Start resumes it from that state in
// seconds instead of booting. Delete removes a saved state.
type Suspender interface {
	Suspend(ctx context.Context, m Machine) error
}

// Templater is a driver that starts machines from a template instead of
// booting them: the base image booted once without configuration and saved
// while it waits for one. A machine whose Template names such a template
// gets its disk as a layer on the template's, and its first Start resumes
// the saved guest with the machine's own NIC and configuration medium in
// the template's devices; the guest then applies its configuration and
// prints the readiness marker as a booted node would. Later starts boot
// from the machine's disk as usual.
type Templater interface {
	// MakeTemplate boots t (a machine with a MAC but no Tap: its NIC is
	// connected to nothing, and an overlay configuration medium the driver
	// leaves empty) until marker appears on its console, saves it into
	// t.Dir and ends it. A complete template in t.Dir is kept as it is.
	MakeTemplate(ctx context.Context, t Machine, marker string) error
	// HasTemplate reports whether t.Dir holds a complete template.
	HasTemplate(t Machine) bool
	// StateCompatibility is as for Snapshotter: a template made under one
	// value cannot be used under another.
	StateCompatibility(ctx context.Context) (string, error)
}
