package lab

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/plan"
)

// nodeRoomMiB is the free space each new node needs in the lab directory:
// its qcow2 layer takes the writes of its first hours (etcd's WAL segments
// are preallocated 64 MiB each, plus the journal, pod logs and etcd's
// data). A full file system does not fail cleanly: QEMU pauses the guest
// at its first write that cannot land, and the node just stops answering.
const nodeRoomMiB = 512

// preflighter is a driver that can tell, before anything is made,
// whether the hypervisor can run the machines (Xen: enough free memory).
type preflighter interface {
	Preflight(ctx context.Context, ms []driver.Machine) error
}

// preflight is up's check before the host is touched: room in the lab
// directory, then whatever the driver checks.
func (e *Env) preflight(ctx context.Context, cls []plan.Cluster) error {
	if err := e.checkSpace(ctx, cls); err != nil {
		return err
	}
	p, ok := e.Driver.(preflighter)
	if !ok {
		return nil
	}
	var ms []driver.Machine
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, _ := e.machine(c, n)
			ms = append(ms, m)
		}
	}
	return p.Preflight(ctx, ms)
}

// checkSpace refuses to create nodes on a file system without room for
// them: each new node's layer (nodeRoomMiB) and each template still to be
// made (its saved memory can be as large as the guest's RAM, plus a
// layer). Nodes that exist already are not counted again.
func (e *Env) checkSpace(ctx context.Context, cls []plan.Cluster) error {
	var needMiB uint64
	var newNodes []string
	for _, c := range cls {
		for _, n := range c.Nodes {
			m, _ := e.machine(c, n)
			st, err := e.Driver.State(ctx, m)
			if err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
			if st == driver.StateAbsent {
				needMiB += nodeRoomMiB
				newNodes = append(newNodes, n.Name)
			}
		}
	}
	if len(newNodes) == 0 {
		return nil
	}
	why := fmt.Sprintf("%d MiB for each of %d new nodes (%s)", nodeRoomMiB, len(newNodes), strings.Join(newNodes, ", "))
	if _, ok := e.Driver.(driver.Templater); ok {
		wanted, _ := e.templatesToMake(ctx, cls)
		var shapes []string
		for _, t := range wanted {
			needMiB += uint64(t.MemoryMiB) + nodeRoomMiB
			shapes = append(shapes, fmt.Sprintf("%d MiB", t.MemoryMiB+nodeRoomMiB))
		}
		if len(shapes) > 0 {
			sort.Strings(shapes)
			why += fmt.Sprintf(", and %s for the node templates to make (memory and a layer)", strings.Join(shapes, " + "))
		}
	}
	freeMiB, err := freeMiB(e.Layout.Dir)
	if err != nil {
		return err
	}
	if freeMiB < needMiB {
		return fmt.Errorf("%s has %d MiB free, but up needs %d MiB there: %s. Free some space, or move the lab to a larger file system", e.Layout.Dir, freeMiB, needMiB, why)
	}
	return nil
}

// freeMiB is the space an unprivileged writer may still use on dir's file
// system.
func freeMiB(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize) >> 20, nil
}
