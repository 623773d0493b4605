// Package media makes the files a machine boots from that every
// QEMU-based driver needs alike (plain QEMU, libvirt, Xen's qdisk): the
// node disk as a qcow2 overlay on the base image, and the configuration
// medium (overlay tar, cloud-init ISO, Ignition JSON) checked and, for
// cloud-init given as a directory, built.
package media

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/render/cloudinit"
)

// Files this package makes in a machine's Dir.
const (
	DiskFile   = "disk.qcow2"
	CIDataFile = "cidata.iso"
)

// Tools are the programs used; the zero value looks qemu-img up in PATH.
type Tools struct {
	QEMUImg string
}

func (t Tools) qemuImg() string {
	if t.QEMUImg == "" {
		return "qemu-img"
	}
	return t.QEMUImg
}

// GiB is n GiB in bytes.
func GiB(n uint64) uint64 { return n << 30 }

// CreateOverlay makes disk a qcow2 overlay on base, of sizeGiB when that
// is larger than base (0 keeps base's size). It is made under a temporary
// name first, so an interrupted run never leaves a half-made disk that
// would be reused; the disk is 0600 (it will hold the node's keys).
func (t Tools) CreateOverlay(ctx context.Context, base, disk string, sizeGiB uint64) error {
	base, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	baseSize, err := t.VirtualSize(ctx, base)
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	tmp := disk + ".tmp"
	args := []string{"create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tmp}
	if GiB(sizeGiB) > baseSize {
		args = append(args, strconv.FormatUint(sizeGiB, 10)+"G")
	}
	_ = os.Remove(tmp)
	if out, err := exec.CommandContext(ctx, t.qemuImg(), args...).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("create disk overlay on %s: %s %s: %w\n%s", base, t.qemuImg(), strings.Join(args, " "), err, out)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, disk)
}

// Grow resizes disk up to sizeGiB; it never shrinks. The disk must not be
// in use (QEMU holds a write lock on it).
func (t Tools) Grow(ctx context.Context, disk string, sizeGiB uint64) error {
	if sizeGiB == 0 {
		return nil
	}
	size, err := t.VirtualSize(ctx, disk)
	if err != nil {
		return err
	}
	if size >= GiB(sizeGiB) {
		return nil
	}
	want := strconv.FormatUint(sizeGiB, 10) + "G"
	if out, err := exec.CommandContext(ctx, t.qemuImg(), "resize", "-q", "-f", "qcow2", disk, want).CombinedOutput(); err != nil {
		return fmt.Errorf("grow %s to %s: %w\n%s", disk, want, err, out)
	}
	return nil
}

// VirtualSize is the size the guest sees of a disk image.
func (t Tools) VirtualSize(ctx context.Context, image string) (uint64, error) {
	// -U: the image may be open by a running QEMU.
	out, err := exec.CommandContext(ctx, t.qemuImg(), "info", "-U", "--output=json", image).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("qemu-img info %s: %w\n%s", image, err, ee.Stderr)
		}
		return 0, fmt.Errorf("qemu-img info %s: %w", image, err)
	}
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", image, err)
	}
	return info.VirtualSize, nil
}

// PrepareConfig checks the machine's configuration medium and builds the
// cidata ISO in Dir when cloud-init is given as a directory (again
// whenever a source file is newer than the ISO).
func PrepareConfig(m driver.Machine) error {
	c := m.Config
	switch c.Kind {
	case driver.ConfigNone:
		return nil
	case driver.ConfigOverlay:
		st, err := os.Stat(c.Path)
		if err != nil {
			return fmt.Errorf("machine %s: overlay config: %w", m.ID(), err)
		}
		if st.IsDir() || st.Size()%512 != 0 || st.Size() == 0 {
			return fmt.Errorf("machine %s: overlay config %s must be a tar file whose size is a non-zero multiple of 512 bytes (it is attached as a raw disk)", m.ID(), c.Path)
		}
	case driver.ConfigIgnition:
		st, err := os.Stat(c.Path)
		if err != nil {
			return fmt.Errorf("machine %s: ignition config: %w", m.ID(), err)
		}
		if st.IsDir() {
			return fmt.Errorf("machine %s: ignition config %s is a directory, want the JSON file", m.ID(), c.Path)
		}
	case driver.ConfigCloudInit:
		st, err := os.Stat(c.Path)
		if err != nil {
			return fmt.Errorf("machine %s: cloud-init config: %w", m.ID(), err)
		}
		if !st.IsDir() {
			return nil // a ready seed ISO
		}
		iso := filepath.Join(m.Dir, CIDataFile)
		if fresh, err := isoFresh(iso, c.Path); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		} else if fresh {
			return nil
		}
		if err := cloudinit.WriteISO(c.Path, iso); err != nil {
			return fmt.Errorf("machine %s: %w", m.ID(), err)
		}
	}
	return nil
}

func isoFresh(iso, srcDir string) (bool, error) {
	st, err := os.Stat(iso)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	for _, name := range []string{cloudinit.UserData, cloudinit.MetaData, cloudinit.NetworkConfig} {
		src, err := os.Stat(filepath.Join(srcDir, name))
		if err != nil {
			return false, fmt.Errorf("cloud-init config: %w", err)
		}
		if src.ModTime().After(st.ModTime()) {
			return false, nil
		}
	}
	return true, nil
}

// ConfigFile is the file attached as the machine's configuration medium
// once PrepareConfig has run ("" for none).
func ConfigFile(m driver.Machine) string {
	if m.Config.Kind == driver.ConfigCloudInit {
		if st, err := os.Stat(m.Config.Path); err == nil && !st.IsDir() {
			return m.Config.Path
		}
		return filepath.Join(m.Dir, CIDataFile)
	}
	return m.Config.Path
}
