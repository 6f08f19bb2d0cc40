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
echo "== serving it over NBD (whole disk as \"\", partitions as p1, p2, ...)"
sock=$demo/nbd.sock
"$build/vdisk-nbd" --fork --pid-file "$demo/nbd.pid" -r -t -e 0 --partitions -k "$sock" sample.qcow2
trap 'kill "$(cat "$demo/nbd.pid")" 2>/dev/null' EXIT
run nbdinfo --list "nbd+unix:///?socket=$sock"
run nbdinfo --map "nbd+unix:///p1?socket=$sock"
echo
echo "== reading the ext4 file system in p1 through NBD (debugfs on a copy)"
run nbdcopy "nbd+unix:///p1?socket=$sock" "$demo/p1.img"
run debugfs -R "cat /hello.txt" "$demo/p1.img"
kill "$(cat "$demo/nbd.pid")"
trap - EXIT

echo
echo "== the disk view through FUSE: the whole disk and each partition as files"
mkdir -p "$demo/disk" "$demo/files-view"
trap '"$build/vdisk-mount" -u "$demo/disk" 2>/dev/null; "$build/vdisk-mount" -u "$demo/files-view" 2>/dev/null' EXIT
run "$build/vdisk-mount" sample.qcow2 "$demo/disk"
run ls -l "$demo/disk"
echo
echo "== the files inside p1, without root, without a VM, without journal replay"
run "$build/vdisk-mount" -m p1 sample.qcow2 "$demo/files-view"
run ls -l "$demo/files-view" "$demo/files-view/docs"
run cat "$demo/files-view/hello.txt"
run "$build/vdisk-mount" -u "$demo/files-view"
run "$build/vdisk-mount" -u "$demo/disk"
trap - EXIT

echo
echo "Attaching to the kernel (vdisk-nbd -c /dev/nbd0 sample.qcow2) needs root and the"
echo "nbd module; 'make check' tests it in a VM running Debian's kernel."
