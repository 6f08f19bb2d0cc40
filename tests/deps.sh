#!/bin/sh
# deps.sh — install the Debian packages vdisk needs to build and test.
#
# Checks what is installed; installs what is missing with apt-get when run as
# root, otherwise prints the exact apt-get command and exits 1.  Called by
# `make check` and `make demo`; safe to run again (does nothing when all is there).
# `tests/deps.sh --bench` (from `make bench`) also installs BENCH_PKGS.
set -eu

# Build: compiler, pkg-config and the libraries the programs link.
BUILD_PKGS="gcc make pkg-config zlib1g-dev libzstd-dev libdeflate-dev libfuse3-dev
 libnbd-dev libtsk-dev libnl-genl-3-dev libgnutls28-dev"
# ISA-L's faster inflate, where Debian builds it (the build works without it).
case "$(dpkg --print-architecture 2>/dev/null)" in
amd64|arm64) BUILD_PKGS="$BUILD_PKGS libisal-dev" ;;
esac
# Tests: the real tools that make test images and act as oracles.
TEST_PKGS="qemu-utils fdisk gdisk e2fsprogs python3 bzip2 coreutils util-linux libnbd-bin nbdkit"
# The VM tests (tests/kernel/vm.sh): a kernel with nbd.ko, qemu, busybox for
# the initramfs; dosfstools/mtools make the FAT images they mount.
TEST_PKGS="$TEST_PKGS qemu-system-x86 linux-image-amd64 busybox-static cpio kmod dosfstools mtools"
# The filesystem-view tests (tests/test-mount-fs.sh, test-mount-list.sh): file
# system makers and fillers, an ISO builder, and The Sleuth Kit's tools as oracle.
TEST_PKGS="$TEST_PKGS ntfs-3g exfatprogs exfat-fuse xorriso sleuthkit"
TEST_PKGS="$TEST_PKGS python3-libnbd fio fuse3 strace nbd-client"
# The benchmark (`make bench`, tests/bench/run; only with --bench): the peers it
# compares against (qcowmount, vmdkmount, xmount, guestmount) and the plot.
BENCH_PKGS="libqcow-utils libvmdk-utils xmount libguestfs-tools fio python3-matplotlib"
WANT_PKGS="$BUILD_PKGS $TEST_PKGS"
[ "${1:-}" = "--bench" ] && WANT_PKGS="$WANT_PKGS $BENCH_PKGS"

missing=""
for p in $WANT_PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "vdisk needs these Debian packages:$missing" >&2
    echo "Install them as root with:" >&2
    echo "  $cmd" >&2
    exit 1
fi
echo "deps.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; a stale one may name
# versions the archive no longer has.  Update first, then install.
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps.sh: done"
