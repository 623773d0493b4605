#!/usr/bin/env bash
# Installs what kubelab and its tests need on Debian bookworm, as root.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  # building
  gcc libc6-dev libseccomp-dev libblkid-dev pkg-config git ca-certificates
  # node image
  mmdebstrap e2fsprogs qemu-utils genisoimage busybox-static bzip2
  # running VMs and the lab network
  qemu-system-x86 iproute2 nftables iptables dnsmasq-base socat openssh-client
  # hypervisor: libvirt (the daemon and its QEMU driver, without
  # libvirt-daemon-system, which would bring systemd and a NAT network)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # checks in tests
  openssl curl cloud-init
  # a disk-bootable qcow2 made at test time (an imported "cloud image")
  syslinux syslinux-common mtools dosfstools
  # Xen: its own domain-file parser (libxlutil), for the Xen driver's tests
  libxen-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# What libvirt-daemon-system would set up and libvirtd needs to start: its
# QEMU user (even though kubelab's domains run QEMU as root) and its
# directories.
if ! getent passwd libvirt-qemu >/dev/null; then
  getent group libvirt-qemu >/dev/null || addgroup --quiet --system libvirt-qemu
  adduser --quiet --system --ingroup libvirt-qemu --disabled-password \
    --home /var/lib/libvirt --no-create-home libvirt-qemu
fi
mkdir -p /var/log/libvirt /var/lib/libvirt /run/libvirt
if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go 1.26 is required (https://go.dev/doc/install); it is not in Debian bookworm" >&2
  exit 1
fi
echo "install-deps: all present"
