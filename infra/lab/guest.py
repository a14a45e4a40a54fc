"""A lab guest that really boots, built from Debian packages without root and without mounts.

The OS disk is an MBR disk with one active FAT partition (label ``VMFERRY-OS``) holding syslinux, Debian's kernel
(linux-image-amd64) and a busybox initramfs written here as a cpio archive; ``mbr.bin`` sits in sector 0. Data
disks are ext4 with a label and a marker file. The guest's init loads its drivers, looks at every disk, prints
what it finds on the serial console and stays up:

    VMFERRY-DISK dev=vda serial=<serial> label=VMFERRY-OS marker=<marker> os=yes
    VMFERRY-DISK dev=vdb serial=<serial> label=VMFDATA1 marker=<marker> os=no
    VMFERRY-GUEST-BOOTED dev=vda serial=<serial>
    vmferry-lab login:

"os=yes" marks the disk whose OS partition carries the boot id the boot loader passed on the kernel command line:
the disk the guest booted from. A guest built with ``virtio=False`` lacks the virtio drivers in its initramfs (as a
VMware guest's host-only initramfs does) and, on virtio disks, finds no OS disk and says
``VMFERRY-GUEST-NO-OS-DISK``.

Built once per machine: the cache key is the versions of the Debian packages used and this builder's own version.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.lab.disks import MIB, SECTOR, DiskImageSpec, PartitionSpec, build_image
from infra.lab.dsfiles import session_cookie
from infra.lab.paths import cache_dir
from infra.lab.seed import LabDiskSpec, LabVMSpec, seed_vm
from infra.lab.vcenter import LabVCenter, session

BUILDER_VERSION = "1"
OS_LABEL = "VMFERRY-OS"
BOOTED = "VMFERRY-GUEST-BOOTED"
NO_OS_DISK = "VMFERRY-GUEST-NO-OS-DISK"
LOGIN_PROMPT = "vmferry-lab login:"
MARKER_FILE = "vmferry-marker.txt"
BOOTID_FILE = "BOOTID"
OS_DISK_MIB = 24
DATA_DISK_MIB = 8
# Debian packages the guest is made of; their versions key the cache.
PACKAGES = ("linux-image-amd64", "busybox-static", "syslinux", "syslinux-common")
# Loaded in this order (dependencies first); the closure comes from the kernel's modules.dep.
STORAGE_MODULES = (
    *("crc32c_generic", "ext4", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859-1"),
    *("ahci", "sd_mod"),
)
VIRTIO_MODULES = ("virtio_pci", "virtio_blk")
# Upper bound for one boot of this guest to its report, stated for the tests (TCG on 2 busy cores; KVM is faster).
BOOT_TIMEOUT_S = 90.0

_DISK_LINE = re.compile(r"^VMFERRY-DISK (.*)$", re.MULTILINE)
_BOOTED_LINE = re.compile(rf"^{BOOTED} dev=(\S*) serial=(\S*)", re.MULTILINE)
BOOT_REPORT_DONE = re.compile(rf"^({BOOTED}|{NO_OS_DISK})", re.MULTILINE)

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "VMFERRY-GUEST-START variant=$(cat /etc/vmferry-variant)"
for module in $(cat /etc/vmferry-modules); do insmod "/modules/$module" 2>/dev/null; done
# busybox has no blkid: read the label where each filesystem keeps it
bytes() { dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null; }
fslabel() {
  if [ "$(bytes "$1" 1080 2 | xxd -p)" = "53ef" ]; then bytes "$1" 1144 16 | tr -d '\000'; return; fi
  case "$(bytes "$1" 54 5)" in FAT1*) bytes "$1" 43 11 | tr -d ' \000'; return;; esac
  case "$(bytes "$1" 82 5)" in FAT32) bytes "$1" 71 11 | tr -d ' \000';; esac
}
bootid=$(sed -n 's/.*vmferry.bootid=\([^ ]*\).*/\1/p' /proc/cmdline)
# disks appear asynchronously once their driver is in: give them a few seconds
tries=0
while [ $tries -lt 20 ]; do
  ls /sys/block | grep -qE '^(vd|sd|hd)' && break
  tries=$((tries + 1)); sleep 0.25
done
sleep 0.5
os_dev=""; os_serial=""
for sys in /sys/block/vd* /sys/block/sd* /sys/block/hd*; do
  [ -e "$sys" ] || continue
  disk=${sys##*/}
  serial=$(cat "$sys/serial" 2>/dev/null | tr -d ' \n')
  [ -n "$serial" ] || serial=$(cat "$sys/device/serial" 2>/dev/null | tr -d ' \n')
  label=""; marker=""; os=no
  for part in "/dev/${disk}1" "/dev/${disk}"; do
    [ -b "$part" ] || continue
    label=$(fslabel "$part")
    [ -n "$label" ] || continue
    if mount -o ro "$part" /mnt 2>/dev/null || mount -o ro,noload "$part" /mnt 2>/dev/null; then
      marker=$(cat /mnt/__MARKER__ 2>/dev/null | tr -d ' \n')
      if [ -n "$bootid" ] && [ "$(cat /mnt/__BOOTID__ 2>/dev/null | tr -d ' \n')" = "$bootid" ]; then
        os=yes; os_dev=$disk; os_serial=$serial
      fi
      umount /mnt
    fi
    break
  done
  echo "VMFERRY-DISK dev=$disk serial=$serial label=$label marker=$marker os=$os"
done
if [ -n "$os_dev" ]; then
  echo "VMFERRY-GUEST-BOOTED dev=$os_dev serial=$os_serial"
  echo "vmferry-lab login: "
else
  echo "VMFERRY-GUEST-NO-OS-DISK: gave up waiting for the disk with boot id $bootid"
fi
while true; do sleep 3600; done
"""


class GuestBuildError(RuntimeError):
    """A Debian package or tool the lab guest is built from is missing or failed."""


@dataclass(frozen=True)
class GuestKit:
    """What every lab guest image is made of, cached once per machine."""

    root: Path
    kernel: Path
    initrd_virtio: Path
    initrd_plain: Path
    mbr: Path
    kernel_release: str
    key: str

    def initrd(self, virtio: bool) -> Path:
        return self.initrd_virtio if virtio else self.initrd_plain


@dataclass(frozen=True)
class GuestDisk:
    path: Path
    label: str
    marker: str
    size_bytes: int
    os: bool


@dataclass(frozen=True)
class GuestImages:
    """One guest: the OS disk first, then its data disks; ``bootid`` is what the boot loader passes."""

    disks: tuple[GuestDisk, ...]
    bootid: str
    virtio: bool


@dataclass(frozen=True)
class SeenDisk:
    dev: str
    serial: str
    label: str
    marker: str
    os: bool


@dataclass(frozen=True)
class GuestReport:
    """What the guest said about itself on its serial console."""

    booted: bool
    boot_dev: str | None
    boot_serial: str | None
    disks: tuple[SeenDisk, ...]


def parse_report(console: str) -> GuestReport:
    disks = []
    for match in _DISK_LINE.finditer(console):
        fields = dict(item.split("=", 1) for item in match.group(1).split() if "=" in item)
        disks.append(
            SeenDisk(
                dev=fields.get("dev", ""),
                serial=fields.get("serial", ""),
                label=fields.get("label", ""),
                marker=fields.get("marker", ""),
                os=fields.get("os") == "yes",
            )
        )
    booted = _BOOTED_LINE.search(console)
    return GuestReport(
        booted=booted is not None,
        boot_dev=booted.group(1) if booted else None,
        boot_serial=booted.group(2) if booted else None,
        disks=tuple(disks),
    )


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found; run infra/lab/install.sh") from exc
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def package_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}|${Version}|${Depends}", package], capture_output=True, text=True
    )
    status, _, rest = out.stdout.partition("|")
    if out.returncode != 0 or status != "install ok installed":
        raise GuestBuildError(f"Debian package {package} is not installed; run infra/lab/install.sh")
    return rest


def kernel_release() -> str:
    """The release of the kernel linux-image-amd64 pulls in (not the running one: that may be another)."""
    depends = package_version("linux-image-amd64").split("|", 1)[1]
    match = re.search(r"linux-image-(\d[^\s,(]*)", depends)
    if not match:
        raise GuestBuildError(f"cannot tell the kernel release from linux-image-amd64's Depends: {depends!r}")
    return match.group(1)


def cache_key() -> str:
    release = kernel_release()
    versions = {pkg: package_version(pkg).split("|", 1)[0] for pkg in PACKAGES}
    versions[f"linux-image-{release}"] = package_version(f"linux-image-{release}").split("|", 1)[0]
    recipe = [BUILDER_VERSION, versions, INIT_SCRIPT, STORAGE_MODULES, VIRTIO_MODULES]
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _module_closure(release: str, wanted: Sequence[str]) -> list[Path]:
    """Module files for ``wanted`` and everything they depend on, dependencies first."""
    base = Path("/lib/modules") / release
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0]
        by_name[name] = path
        by_name[name.replace("-", "_")] = path
    ordered: list[str] = []

    def visit(path: str) -> None:
        if path in ordered:
            return
        for dep in deps.get(path, []):
            visit(dep)
        ordered.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestBuildError(f"kernel {release} has no module {name}")
        visit(by_name[name])
    return [base / path for path in ordered]


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); symlinks carry their target as data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(f"{value:08X}".encode() for value in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def build_initramfs(release: str, *, virtio: bool, out: Path) -> Path:
    modules = _module_closure(release, [*STORAGE_MODULES, *(VIRTIO_MODULES if virtio else ())])
    entries: list[tuple[str, int, bytes]] = [
        ("bin", 0o40755, b""),
        ("etc", 0o40755, b""),
        ("modules", 0o40755, b""),
        ("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()),
        ("bin/sh", 0o120777, b"busybox"),
        ("init", 0o100755, INIT_SCRIPT.replace("__MARKER__", MARKER_FILE).replace("__BOOTID__", BOOTID_FILE).encode()),
        ("etc/vmferry-variant", 0o100644, b"virtio\n" if virtio else b"no-virtio\n"),
        ("etc/vmferry-modules", 0o100644, "".join(f"{m.name}\n" for m in modules).encode()),
    ]
    entries += [(f"modules/{m.name}", 0o100644, m.read_bytes()) for m in modules]
    if not Path("/bin/busybox").read_bytes().startswith(b"\x7fELF"):
        raise GuestBuildError("/bin/busybox is not a binary; install busybox-static")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0))
    tmp.replace(out)
    return out


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def guest_kit() -> GuestKit:
    """The kernel, both initramfs variants and the MBR code, built once per machine under the lab cache."""
    key = cache_key()
    release = kernel_release()
    root = cache_dir() / "guest" / key
    kit = GuestKit(
        root=root,
        kernel=root / "vmlinuz",
        initrd_virtio=root / "initrd-virtio.img",
        initrd_plain=root / "initrd-no-virtio.img",
        mbr=root / "mbr.bin",
        kernel_release=release,
        key=key,
    )
    done = root / "done"
    if done.exists():
        return kit
    with cache_lock(cache_dir() / "guest" / "build.lock"):
        if done.exists():
            return kit
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f"/boot/vmlinuz-{release}", kit.kernel)
        shutil.copyfile("/usr/lib/syslinux/mbr/mbr.bin", kit.mbr)
        build_initramfs(release, virtio=True, out=kit.initrd_virtio)
        build_initramfs(release, virtio=False, out=kit.initrd_plain)
        done.write_text(json.dumps({"key": key, "kernel": release}))
    return kit


def syslinux_cfg(bootid: str) -> bytes:
    return (
        "SERIAL 0 115200\nDEFAULT vmferry\nPROMPT 0\nTIMEOUT 1\n"
        "LABEL vmferry\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
        f"  APPEND console=ttyS0,115200 loglevel=4 panic=-1 vmferry.bootid={bootid}\n"
    ).encode()


def build_guest(
    out_dir: Path, name: str, *, data_disks: int = 3, virtio: bool = True, data_disk_mib: int = DATA_DISK_MIB
) -> GuestImages:
    """Raw images for one guest under ``out_dir``: ``<name>-os.raw`` and ``<name>-data<N>.raw``.

    Markers and the boot id derive from ``name``, so two guests never answer for each other.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        raise ValueError(f"guest name {name!r}: letters, digits, '_' and '-' only")
    kit = guest_kit()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f"{name}-scratch"
    bootid = hashlib.sha256(f"bootid/{name}".encode()).hexdigest()[:16]
    os_marker = f"{name}-os"
    os_spec = DiskImageSpec(
        size_bytes=OS_DISK_MIB * MIB,
        label="dos",
        label_id=f"0x{hashlib.sha256(name.encode()).hexdigest()[:8]}",
        seed=1,
        partitions=(
            PartitionSpec(
                size_mib=None,
                type="6",
                content="fat",
                fs_label=OS_LABEL,
                bootable=True,
                files={
                    "vmlinuz": kit.kernel.read_bytes(),
                    "initrd.img": kit.initrd(virtio).read_bytes(),
                    "syslinux.cfg": syslinux_cfg(bootid),
                    BOOTID_FILE: f"{bootid}\n".encode(),
                    MARKER_FILE: f"{os_marker}\n".encode(),
                },
            ),
        ),
    )
    os_image = build_image(os_spec, out_dir / f"{name}-os.raw", scratch / "os")
    _install_syslinux(os_image.path, kit.mbr)
    disks = [GuestDisk(os_image.path, OS_LABEL, os_marker, os_image.size_bytes, True)]
    for number in range(1, data_disks + 1):
        label = f"VMFDATA{number}"
        marker = f"{name}-data{number}"
        spec = DiskImageSpec(
            size_bytes=data_disk_mib * MIB,
            label="dos",
            label_id=f"0x{hashlib.sha256(f'{name}/{number}'.encode()).hexdigest()[:8]}",
            seed=number,
            partitions=(
                PartitionSpec(
                    size_mib=None,
                    type="83",
                    content="ext4",
                    fs_label=label,
                    files={MARKER_FILE: f"{marker}\n".encode()},
                ),
            ),
        )
        image = build_image(spec, out_dir / f"{name}-data{number}.raw", scratch / f"data{number}")
        disks.append(GuestDisk(image.path, label, marker, image.size_bytes, False))
    shutil.rmtree(scratch, ignore_errors=True)
    return GuestImages(disks=tuple(disks), bootid=bootid, virtio=virtio)


def _install_syslinux(image: Path, mbr: Path) -> None:
    """syslinux into the first partition's FAT through mtools (no mount), and its MBR code in sector 0."""
    start = _first_partition_start(image)
    _run(["syslinux", "--install", "--offset", str(start * SECTOR), str(image)])
    code = mbr.read_bytes()
    if len(code) != 440:
        raise GuestBuildError(f"{mbr} is {len(code)} bytes, not syslinux's 440-byte mbr.bin")
    with image.open("r+b") as handle:
        handle.write(code)  # the partition table from byte 440 on stays


def _first_partition_start(image: Path) -> int:
    table = json.loads(_run(["sfdisk", "--json", str(image)]))
    return int(table["partitiontable"]["partitions"][0]["start"])


def guest_vm_spec(name: str, images: GuestImages) -> LabVMSpec:
    """A lab vCenter VM made of a guest's images: the OS disk on SCSI 0:0 (the boot disk), data disks after it."""
    disks = tuple(
        LabDiskSpec(
            label="os" if disk.os else f"data{unit}",
            bus=0,
            unit=unit,
            boot=disk.os,
            # the image is prebuilt: this spec only carries its size for vCenter
            image=DiskImageSpec(size_bytes=disk.size_bytes, label="dos", label_id="0x0", seed=0, partitions=()),
            source=disk.path,
        )
        for unit, disk in enumerate(images.disks)
    )
    return LabVMSpec(name=name, controllers=1, disks=disks)


def seed_guest_vm(
    lab: LabVCenter, workdir: Path, name: str, *, data_disks: int = 3, virtio: bool = True
) -> GuestImages:
    """Build guest ``name`` and make it a VM of the lab vCenter (idempotent, as seed_vm)."""
    images = build_guest(workdir / "guest-images", name, data_disks=data_disks, virtio=virtio)
    with session(lab) as si:
        seed_vm(si, lab, guest_vm_spec(name, images), workdir / name, session_cookie(si))
    return images
