#!/usr/bin/env bash
# demo.sh — `make demo`: make a small sample image on the spot (a qcow2
# holding an MBR disk with one ext4 partition with a few files) and show
# vdisk's tools on it.  Usage: tests/demo.sh [BUILD_DIR]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/${1:-build}
demo=$build/demo
rm -rf "$demo"
mkdir -p "$demo/files/docs"

run() { printf '\n$ %s\n' "$*"; "$@"; }

echo "== making a sample image in $demo"
cd "$demo"
printf 'Hello from inside a qcow2 image.\n' > files/hello.txt
printf 'vdisk reads qcow2 and raw images, and their partitions.\n' > files/docs/readme.txt
seq 1 20000 > files/numbers.txt
truncate -s 64M disk.raw
printf 'label: dos\nstart=2048, size=100000, type=83, bootable\n' | sfdisk -q disk.raw
mkfs.ext4 -q -F -L DEMO -E offset=$((2048 * 512)) -d files disk.raw $((100000 / 2))k
qemu-img convert -c -O qcow2 disk.raw sample.qcow2
rm disk.raw
echo "sample.qcow2: $(stat -c %s sample.qcow2) bytes on disk"

echo
echo "== what the image holds"
run "$build/vdisk-mount" -l sample.qcow2

echo
echo "Next: the NBD server (vdisk-nbd) and the FUSE mounts (vdisk-mount IMAGE DIR)"
echo "join this demo as they land."
