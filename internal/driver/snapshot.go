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
