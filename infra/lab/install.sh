#!/bin/sh
# Install what the vCenter lab needs from Debian: the Go toolchain and govmomi sources to build vcsim,
# patch for our simulator fixes, and the disk tools that build lab disks without root or mount.
# Idempotent: apt-get runs only if something is missing, and the package lists are refreshed only then.
set -eu

PACKAGES="golang-go golang-github-vmware-govmomi-dev patch qemu-utils fdisk mtools e2fsprogs nbdkit libnbd-bin"
# Guests that boot (infra/lab/guest.py, clients/qemu_boot.py, tasks/guest_prep.py): qemu, the Debian kernel, busybox
# and syslinux the lab guest is built from, and virt-v2v-in-place (libguestfs) that prepares a guest for KVM.
PACKAGES="$PACKAGES qemu-system-x86 linux-image-amd64 busybox-static syslinux syslinux-common extlinux"
PACKAGES="$PACKAGES libguestfs-tools virt-v2v mmdebstrap"

missing=""
for pkg in $PACKAGES; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "lab packages already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
# $missing is a list of package names, split on purpose.
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $missing
