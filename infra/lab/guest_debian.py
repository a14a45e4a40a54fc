"""The smallest guest virt-v2v-in-place accepts: a tiny Debian (mmdebstrap minbase + kernel + grub), built once.

Why not the busybox guest (infra/lab/guest.py): virt-v2v-in-place first runs libguestfs inspection, which finds no
operating system on it ("inspection could not detect the source guest"): inspection wants a Linux root with /etc,
/bin and /etc/fstab, a distribution it can name (/etc/os-release, /etc/debian_version) and a package database; the
conversion then wants installed kernel packages with /lib/modules, a grub boot loader it can update, and the
distribution's own initramfs tool (update-initramfs on Debian) to run inside the guest.

So this guest is a real Debian root: ``mmdebstrap --variant=minbase`` with linux-image-amd64, initramfs-tools and
grub-pc, packed into an ext4 image with ``mke2fs -d`` (no mount) with GRUB's modules and a grub.cfg, GRUB's boot
code written into the image from the host (infra/lab/grub_bios.py), then finished inside libguestfs's appliance by
virt-customize (update-initramfs). Like a VMware guest's host-only initramfs, its
initramfs is built with ``MODULES=list`` and no virtio drivers, so on virtio disks it does not find its root; once
virt-v2v-in-place has added the virtio modules and rebuilt the initramfs, it boots. Its init is a script that
prints the same report as the busybox guest (VMFERRY-DISK / VMFERRY-GUEST-BOOTED lines).

Cached under the lab cache dir, keyed by the candidate versions of the packages it is made of.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from infra.lab.disks import MIB, DiskImageSpec, PartitionSpec, build_image
from infra.lab.grub_bios import embed, make_core_image
from infra.lab.guest import GuestBuildError, cache_lock
from infra.lab.paths import cache_dir

BUILDER_VERSION = "2"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("linux-image-amd64", "initramfs-tools", "grub-pc")
ROOT_LABEL = "vmfroot"
IMAGE_MIB = 1400
# libguestfs's appliance cannot use nested KVM here (see docs/guest-boot.md)
LIBGUESTFS_ENV = {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg", "LIBGUESTFS_BACKEND": "direct"}
# The modules a VMware guest's host-only initramfs would hold: SATA/SCSI disks and ext4, no virtio.
HOST_ONLY_MODULES = ("ahci", "sd_mod", "ext4")

INIT_SCRIPT = r"""#!/bin/sh
# vmferry lab guest init: report the disks this Debian sees, then stay up
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "VMFERRY-GUEST-START variant=debian"
root=$(findmnt -n -o SOURCE /)
os_dev=""; os_serial=""
for sys in /sys/block/vd* /sys/block/sd*; do
  [ -e "$sys" ] || continue
  disk=${sys##*/}
  serial=$(cat "$sys/serial" 2>/dev/null | tr -d ' \n')
  label=$(blkid -o value -s LABEL "/dev/${disk}1" 2>/dev/null)
  os=no
  case "$root" in "/dev/${disk}"*) os=yes; os_dev=$disk; os_serial=$serial;; esac
  echo "VMFERRY-DISK dev=$disk serial=$serial label=$label marker= os=$os"
done
if [ -n "$os_dev" ]; then
  echo "VMFERRY-GUEST-BOOTED dev=$os_dev serial=$os_serial"
  echo "vmferry-lab login: "
fi
while true; do sleep 3600; done
"""

GRUB_DEFAULTS = (
    "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=Debian\nGRUB_DISABLE_OS_PROBER=true\n"
    'GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
    # rootdelay: give up on a missing root device in seconds, not initramfs-tools' default 30
    'GRUB_CMDLINE_LINUX="console=ttyS0,115200 rootdelay=8 init=/usr/local/sbin/vmferry-init"\n'
    'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
)


def _run(argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found; run infra/lab/install.sh") from exc
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise GuestBuildError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _candidate(package: str) -> str:
    out = _run(["apt-cache", "policy", package])
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip()
    raise GuestBuildError(f"apt knows no candidate for {package}; run apt-get update")


def cache_key() -> str:
    versions = {pkg: _candidate(pkg) for pkg in PACKAGES}
    recipe = [BUILDER_VERSION, SUITE, versions, INIT_SCRIPT, GRUB_DEFAULTS, HOST_ONLY_MODULES]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def debian_guest_image() -> Path:
    """The raw OS disk of the tiny Debian guest (host-only initramfs, no virtio), built once per machine.

    Callers copy it before booting or converting it: the cached image is never changed.
    """
    root = cache_dir() / "guest-debian" / cache_key()
    image = root / "debian-os.raw"
    if (root / "done").exists():
        return image
    with cache_lock(cache_dir() / "guest-debian" / "build.lock"):
        if (root / "done").exists():
            return image
        root.mkdir(parents=True, exist_ok=True)
        log = root / "build.log"
        tarball = root / "root.tar"
        if not tarball.exists():
            partial = root / "root.partial.tar"
            _run(
                ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
                log=log,
            )
            partial.replace(tarball)
        spec = DiskImageSpec(
            size_bytes=IMAGE_MIB * MIB,
            label="dos",
            label_id="0x766d6664",
            seed=0,
            partitions=(PartitionSpec(size_mib=None, type="83", content="zero", bootable=True),),
        )
        built = build_image(spec, root / "debian-os.partial.raw", root / "scratch")
        boot_img, core_img = _fill_root_partition(built.path, tarball, root / "scratch")
        _finish_inside(built.path, root, log)
        embed(built.path, boot_img, core_img)
        built.path.replace(image)
        shutil.rmtree(root / "scratch", ignore_errors=True)
        tarball.unlink()
        (root / "done").write_text(json.dumps({"key": root.name}))
    return image


def _fill_root_partition(disk: Path, tarball: Path, scratch: Path) -> tuple[bytes, bytes]:
    """The tarball unpacked (owners kept: needs root, as mmdebstrap's root mode does), with GRUB's modules and
    grub.cfg in /boot/grub as grub-install and update-grub would leave them, packed by mke2fs -d (e2fsprogs 1.47.0
    cannot read a tarball itself) and copied in at the partition's offset. Returns boot.img and core.img, made from
    the guest's own GRUB, for :func:`infra.lab.grub_bios.embed`."""
    table = json.loads(_run(["sfdisk", "--json", str(disk)]))
    part = table["partitiontable"]["partitions"][0]
    offset, size = int(part["start"]) * 512, int(part["size"]) * 512
    fs = scratch / "root.ext4"
    with fs.open("wb") as handle:
        handle.truncate(size)
    tree = scratch / "root"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    _run(["tar", "-x", "-p", "--numeric-owner", "-f", str(tarball), "-C", str(tree)])
    modules = tree / "usr/lib/grub/i386-pc"
    grub_dir = tree / "boot/grub"
    shutil.copytree(modules, grub_dir / "i386-pc", ignore=shutil.ignore_patterns("*.img", "*.image", "*.exec"))
    (grub_dir / "grub.cfg").write_text(_grub_config(tree / "boot"))
    boot_img = (modules / "boot.img").read_bytes()
    core_img = make_core_image(modules, scratch / "core.img", "(hd0,msdos1)/boot/grub")
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(tree), str(fs)])
    shutil.rmtree(tree)
    with disk.open("r+b") as dst, fs.open("rb") as src:
        dst.seek(offset)
        shutil.copyfileobj(src, dst, 4 * MIB)
    fs.unlink()
    return boot_img, core_img


def _grub_config(boot: Path) -> str:
    """What update-grub makes of GRUB_DEFAULTS for the one installed kernel; virt-v2v-in-place regenerates it with
    the guest's own update-grub when it converts the guest."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"expected one kernel in the Debian guest, found {kernels or 'none'}")
    version = kernels[0]
    return (
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
        "set default=0\nset timeout=0\n"
        "menuentry 'Debian GNU/Linux' {\n"
        "  insmod part_msdos\n  insmod ext2\n"
        f"  search --no-floppy --label --set=root {ROOT_LABEL}\n"
        f"  linux /boot/vmlinuz-{version} root=LABEL={ROOT_LABEL} ro console=ttyS0,115200 rootdelay=8"
        " init=/usr/local/sbin/vmferry-init\n"
        f"  initrd /boot/initrd.img-{version}\n"
        "}\n"
    )


def _finish_inside(disk: Path, root: Path, log: Path) -> None:
    init = root / "vmferry-init"
    init.write_text(INIT_SCRIPT)
    modules = "".join(f"{m}\n" for m in HOST_ONLY_MODULES)
    argv = [
        "virt-customize", "--no-network", "--format", "raw", "-a", str(disk),
        "--write", f"/etc/fstab:LABEL={ROOT_LABEL} / ext4 defaults 0 1\n",
        "--hostname", "vmferry-debian",
        "--mkdir", "/usr/local/sbin",
        "--upload", f"{init}:/usr/local/sbin/vmferry-init",
        "--chmod", "0755:/usr/local/sbin/vmferry-init",
        "--write", f"/etc/default/grub:{GRUB_DEFAULTS}",
        "--write", "/etc/initramfs-tools/conf.d/vmferry:MODULES=list\n",
        "--write", f"/etc/initramfs-tools/modules:{modules}",
        "--run-command", "update-initramfs -u -k all",
    ]  # fmt: skip
    _run(argv, env=LIBGUESTFS_ENV, log=log)
