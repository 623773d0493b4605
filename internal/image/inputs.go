package image

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// assets are the files kubelab bakes into its node image: units and scripts
// that form the contract with the node configuration renderers.
//
//go:embed assets
var assets embed.FS

// builderVersion changes whenever the build steps themselves change in a way
// that the other inputs do not show (file placement, enabled units, ...).
const builderVersion = "kubelab-image/4"

// DefaultPackages are the Debian packages of kubelab's node image. Debian's
// containerd, runc and etcd are deliberately absent: the components built by
// kubelab are installed instead.
var DefaultPackages = []string{
	"systemd-sysv", "udev", "dbus", "openssh-server", "iproute2", "iptables",
	"nftables", "conntrack", "socat", "ethtool", "kmod", "ca-certificates",
	"cloud-init", "linux-image-cloud-amd64", "sudo", "procps", "e2fsprogs",
	"netbase", "tar",
	// The API virtual address of clusters with two or more control planes.
	"keepalived",
}

// DefaultSources are the apt sources the image is built from.
var DefaultSources = []string{
	"deb http://deb.debian.org/debian bookworm main",
	"deb http://deb.debian.org/debian bookworm-updates main",
	"deb http://deb.debian.org/debian-security bookworm-security main",
}

// RootLabel is the ext4 label of the image's root filesystem.
const RootLabel = "kubelab-root"

// KernelCmdline is the kernel command line kubelab's image is booted with
// (direct kernel boot). The root is found by label: which virtio disk
// becomes vda depends on PCI slot order, and the config disk may come first.
// mitigations=off saves seconds under emulation; with net.ifnames=0 the
// interface is eth0, as the node configs name it.
const KernelCmdline = "root=LABEL=" + RootLabel + " rw console=ttyS0 mitigations=off net.ifnames=0"

// KernelCmdlineNoCloudInit is appended when the node is configured by the
// overlay disk: cloud-init then does not run at all.
const KernelCmdlineNoCloudInit = "cloud-init=disabled"

// KernelCmdlineTemplate makes a boot a template boot (see await-config).
const KernelCmdlineTemplate = "kubelab.template"

// Inputs is everything a built node image depends on. Its Hash keys the
// image cache: it changes when, and only when, one of these changes.
type Inputs struct {
	Builder        string            `json:"builder"`
	Suite          string            `json:"suite"`
	Sources        []string          `json:"sources"`
	Packages       []string          `json:"packages"`
	MmdebstrapOpts []string          `json:"mmdebstrap_options"`
	DiskSize       string            `json:"disk_size"`
	KernelCmdline  string            `json:"kernel_cmdline"`
	ComponentsSHA  map[string]string `json:"components"`  // file (relative to the components dir) -> sha256
	BakedFilesSHA  map[string]string `json:"baked_files"` // asset name -> sha256
}

// DefaultInputs returns the inputs for the given components.
func DefaultInputs(c Components) (Inputs, error) {
	baked, err := bakedFileHashes()
	if err != nil {
		return Inputs{}, err
	}
	return Inputs{
		Builder:        builderVersion,
		Suite:          "bookworm",
		Sources:        append([]string(nil), DefaultSources...),
		Packages:       append([]string(nil), DefaultPackages...),
		MmdebstrapOpts: defaultMmdebstrapOpts(),
		DiskSize:       "3G",
		KernelCmdline:  KernelCmdline,
		ComponentsSHA:  c.Files,
		BakedFilesSHA:  baked,
	}, nil
}

// Hash is the hex sha256 of the canonical form of the inputs. Package order
// does not matter (it does not change what is installed); everything else
// is taken as given.
func (in Inputs) Hash() string {
	c := in
	c.Packages = append([]string(nil), in.Packages...)
	sort.Strings(c.Packages)
	// encoding/json sorts map keys, so the encoding is canonical.
	b, err := json.Marshal(c)
	if err != nil {
		// Only plain strings and maps of strings: cannot fail.
		panic(fmt.Sprintf("encode image inputs: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// BaseHash keys the cached mmdebstrap result: only the inputs mmdebstrap
// itself sees.
func (in Inputs) BaseHash() string {
	pkgs := append([]string(nil), in.Packages...)
	sort.Strings(pkgs)
	b, err := json.Marshal([]any{in.Builder, in.Suite, in.Sources, pkgs, in.MmdebstrapOpts})
	if err != nil {
		panic(fmt.Sprintf("encode image base inputs: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func defaultMmdebstrapOpts() []string {
	opts := []string{"--mode=root", "--variant=minbase", "--format=directory",
		`--aptopt=APT::Install-Recommends "false"`}
	for _, p := range []string{"/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*",
		"/usr/share/locale/*", "/usr/share/lintian/*", "/usr/share/linda/*"} {
		opts = append(opts, "--dpkgopt=path-exclude="+p)
	}
	// Keep licences and the locale alias file some tools read.
	opts = append(opts, "--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-include=/usr/share/locale/locale.alias")
	// Before the kernel's package makes the initrd: only the drivers that
	// find the root disk go into it (virtio, and Xen's block front end),
	// not every storage and input driver (MODULES=most: 190 modules, 15 MB
	// to unpack and probe at every boot under emulation).
	opts = append(opts, "--essential-hook="+initrdHook)
	return opts
}

// initrdHook configures initramfs-tools inside the root tree ($1).
const initrdHook = `mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" && ` +
	`printf 'MODULES=list\n' >"$1/etc/initramfs-tools/conf.d/kubelab.conf" && ` +
	`printf '#!/bin/sh\n[ "$1" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\n` +
	`manual_add_modules virtio_pci virtio_blk virtio_scsi sd_mod xen_blkfront\n' >"$1/etc/initramfs-tools/hooks/kubelab" && ` +
	`chmod 0755 "$1/etc/initramfs-tools/hooks/kubelab"`

func bakedFileHashes() (map[string]string, error) {
	out := map[string]string{}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "assets/")] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hash baked image files: %w", err)
	}
	return out, nil
}
