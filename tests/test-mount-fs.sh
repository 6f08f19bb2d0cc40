#!/usr/bin/env bash
# test-mount-fs.sh — the filesystem view (vdisk-mount -m / --all) against
# the directory trees the images were made from, and against the kernel's
# (or ntfs-3g's, exfat-fuse's) reading of the same partitions.
#
# Images: ext4 (mkfs.ext4 -d) in an MBR disk with a second ext4 for /boot,
# converted to qcow2; FAT32 + FAT16 (mkfs.fat + mcopy) in a GPT disk; NTFS
# (mkntfs, filled through ntfs-3g as root, plus one file by ntfscp); exFAT
# (mkfs.exfat, filled through exfat-fuse as root); ISO 9660 with Rock Ridge
# and Joliet (xorriso) as a whole disk.  Trees hold nested directories, a
# 10 000-entry directory (ext4, NTFS; 150 entries on FAT, where mcopy is
# quadratic), a 100 MiB file, a sparse file, symlinks, hard links, odd and
# UTF-8 names, set timestamps, and FIFOs and device nodes where the file
# system has them.  Compared: names, types, sizes, SHA-256 of contents, link
# targets, link counts, mode/uid/gid where kept, mtimes to the resolution the
# file system keeps (ext4 ns, NTFS 100 ns, FAT/exFAT 2 s, ISO 1 s).
# Real images with file systems (../shared/realimages) are compared with
# The Sleuth Kit's own fls/icat on a raw copy.
# Thread model: sequential; every mount made here is unmounted here.
. "$(dirname "$0")/lib.sh"
require qemu-img sfdisk mkfs.ext4 debugfs mkfs.fat mcopy mkntfs ntfs-3g ntfscp mkfs.exfat \
    mount.exfat-fuse xorriso fls icat python3 fusermount3 findmnt sha256sum
export TZ=UTC LC_ALL=C.UTF-8
# Once mounted, the serving process's stderr is /dev/null: in the sanitizer
# build its reports go to files, checked at the end.
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$T/san"
[ -n "${UBSAN_OPTIONS:-}" ] && export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$T/san"
ROOT=0
[ "$(id -u)" -eq 0 ] && ROOT=1

# ---------------------------------------------------------------- helpers

# cmp.py SRC DST [options]: compare two trees (see the option list below);
# prints the differences (at most 30) and exits 1 when there are any.
cat >"$T/cmp.py" <<'EOF'
import argparse, hashlib, os, stat, sys
ap = argparse.ArgumentParser()
ap.add_argument("src"); ap.add_argument("dst")
ap.add_argument("--mtime-res", type=int, default=0, help="ns; 0: do not compare")
ap.add_argument("--no-dir-mtime", action="store_true")
ap.add_argument("--mode", action="store_true")
ap.add_argument("--owner", action="store_true")
ap.add_argument("--nlink", action="store_true", help="link counts of non-directories")
ap.add_argument("--rdev", action="store_true")
ap.add_argument("--exact", action="store_true",
                help="also inode numbers, all link counts, atime/ctime (ns), rdev")
ap.add_argument("--ignore", action="append", default=[], help="a top-level name only in dst")
ap.add_argument("--want-mode", help="dirs,files octal: the mode every entry must have")
ap.add_argument("--want-owner", help="uid:gid every entry must have")
a = ap.parse_args()

def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b: break
            h.update(b)
    return h.hexdigest()

def walk(top, ignore):
    out = {}
    for d, dirs, files in os.walk(top):
        rel = os.path.relpath(d, top)
        if rel == ".":
            dirs[:] = [n for n in dirs if n not in ignore]
        for n in dirs + files:
            r = n if rel == "." else os.path.join(rel, n)
            if rel == "." and n in ignore: continue
            out[r] = os.lstat(os.path.join(top, r))
    return out

s, t = walk(a.src, []), walk(a.dst, a.ignore)
errs = []
for r in sorted(set(s) - set(t)): errs.append(f"missing in view: {r}")
for r in sorted(set(t) - set(s)): errs.append(f"only in view: {r}")
wm = [int(x, 8) for x in a.want_mode.split(",")] if a.want_mode else None
wo = [int(x) for x in a.want_owner.split(":")] if a.want_owner else None
for r in sorted(set(s) & set(t)):
    x, y = s[r], t[r]
    def bad(what, u, v): errs.append(f"{r}: {what}: source {u}, view {v}")
    if stat.S_IFMT(x.st_mode) != stat.S_IFMT(y.st_mode):
        bad("type", stat.filemode(x.st_mode), stat.filemode(y.st_mode)); continue
    isdir = stat.S_ISDIR(x.st_mode)
    if stat.S_ISREG(x.st_mode):
        if x.st_size != y.st_size: bad("size", x.st_size, y.st_size)
        elif sha(os.path.join(a.src, r)) != sha(os.path.join(a.dst, r)): bad("sha256", "", "differs")
    if stat.S_ISLNK(x.st_mode):
        u, v = os.readlink(os.path.join(a.src, r)), os.readlink(os.path.join(a.dst, r))
        if u != v: bad("link target", u, v)
        if x.st_size != y.st_size: bad("link size", x.st_size, y.st_size)
    if (a.rdev or a.exact) and (stat.S_ISCHR(x.st_mode) or stat.S_ISBLK(x.st_mode)):
        if x.st_rdev != y.st_rdev: bad("rdev", hex(x.st_rdev), hex(y.st_rdev))
    if a.mode or a.exact:
        if stat.S_IMODE(x.st_mode) != stat.S_IMODE(y.st_mode):
            bad("mode", oct(stat.S_IMODE(x.st_mode)), oct(stat.S_IMODE(y.st_mode)))
    if wm and not stat.S_ISLNK(y.st_mode) and stat.S_IMODE(y.st_mode) != wm[0 if isdir else 1]:
        bad("mode", oct(wm[0 if isdir else 1]), oct(stat.S_IMODE(y.st_mode)))
    if a.owner or a.exact:
        if (x.st_uid, x.st_gid) != (y.st_uid, y.st_gid):
            bad("owner", (x.st_uid, x.st_gid), (y.st_uid, y.st_gid))
    if wo and [y.st_uid, y.st_gid] != wo: bad("owner", wo, (y.st_uid, y.st_gid))
    if (a.nlink and not isdir) or a.exact:
        if x.st_nlink != y.st_nlink: bad("link count", x.st_nlink, y.st_nlink)
    if a.exact:
        if x.st_ino != y.st_ino: bad("inode", x.st_ino, y.st_ino)
        for f in ("st_atime_ns", "st_ctime_ns"):
            if getattr(x, f) != getattr(y, f): bad(f, getattr(x, f), getattr(y, f))
    res = 1 if a.exact else a.mtime_res
    if res and not stat.S_ISLNK(x.st_mode) and not (isdir and a.no_dir_mtime):
        if abs(x.st_mtime_ns - y.st_mtime_ns) >= res:
            bad("mtime (ns)", x.st_mtime_ns, y.st_mtime_ns)
for e in errs[:30]: print(e)
if len(errs) > 30: print(f"... and {len(errs) - 30} more")
print(f"{len(s)} entries in the source, {len(t)} in the view, {len(errs)} differences",
      file=sys.stderr)
sys.exit(1 if errs else 0)
EOF

# same_tree DESC SRC DST [cmp.py options]
same_tree() {
    local desc=$1 src=$2 dst=$3; shift 3
    if python3 "$T/cmp.py" "$src" "$dst" "$@" >"$T/.cmp" 2>"$T/.cmperr"; then
        ok "$desc"
    else
        not_ok "$desc" "$(head -n 30 "$T/.cmp")" "$(tail -n 3 "$T/.cmperr")"
    fi
}

# unmount_any MNT: cleanup for any mount made here (ours, the kernel's, ntfs-3g's).
unmount_any() {
    mountpoint -q "$1" 2>/dev/null || return 0
    case "$(findmnt -n -o SOURCE --target "$1" 2>/dev/null)" in
    vdisk:*) "$VDISK_MOUNT" -u "$1" >/dev/null 2>&1 || fusermount3 -u -z "$1" 2>/dev/null ;;
    *) umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null ;;
    esac
    return 0
}

# view_mount DESC [VDISK-MOUNT ARGS...] IMAGE MNT: mount (a test); cleanup registered.
view_mount() {
    local desc=$1; shift
    local mnt=${!#}
    mkdir -p "$mnt"
    on_exit "unmount_any '$mnt'"
    if "$VDISK_MOUNT" "$@" >"$T/.out" 2>"$T/.err" && ! _sanitizer_report "$T/.err"; then
        ok "$desc"
        return 0
    fi
    not_ok "$desc" "command: $VDISK_MOUNT $*" "$(tail -n 10 "$T/.err")"
    return 1
}

# view_unmount DESC MNT: `vdisk-mount -u` returns 0, the mount is gone and so is
# the serving process.
view_unmount() {
    local desc=$1 mnt=$2 src pid rc=0 i
    src=$(findmnt -n -o SOURCE --target "$mnt" 2>/dev/null)
    pid=$(echo "$src" | cut -d: -f2)
    "$VDISK_MOUNT" -u "$mnt" >"$T/.out" 2>"$T/.err" || rc=$?
    for ((i = 0; i < 50; i++)); do [ -n "$pid" ] && ! process_gone "$pid" || break; sleep 0.1; done
    if [ "$rc" -eq 0 ] && ! mountpoint -q "$mnt" && [ -n "$pid" ] && process_gone "$pid" &&
        ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "exit $rc, source '$src', pid $pid $(process_gone "$pid" || echo alive)" \
            "$(tail -n 5 "$T/.err")"
        unmount_any "$mnt"
    fi
}

# erofs DESC FILE: opening FILE for writing fails with EROFS.
erofs() {
    if python3 - "$2" <<'EOF' 2>"$T/.err"
import errno, os, sys
try:
    os.open(sys.argv[1], os.O_WRONLY)
except OSError as e:
    sys.exit(0 if e.errno == errno.EROFS else f"errno {e.errno} ({e.strerror})")
sys.exit("opened for writing")
EOF
    then ok "$1"; else not_ok "$1" "$(cat "$T/.err")"; fi
}

# ms: milliseconds since the epoch.
ms() { echo $(( $(date +%s%N) / 1000000 )); }

# mk_tree DIR FEATURES...: the known tree.  FEATURES: many=N big sparse links
# hardlinks special owners emoji.
mk_tree() {
    local d=$1 f many=0; shift
    mkdir -p "$d/nested/level2/level3" "$d/empty dir" "$d/dir with space" "$d/ünïcødé dir"
    echo "deep" >"$d/nested/level2/level3/deep.txt"
    printf 'one\n' >"$d/nested/one.txt"
    : >"$d/empty file"
    echo "spaced" >"$d/dir with space/file with space.txt"
    echo "café" >"$d/ünïcødé dir/naïve café.txt"
    echo "nihongo" >"$d/日本語.txt"
    echo "dash" >"$d/-leading-dash"
    echo "semi" >"$d/semi;colon & amp"
    echo "mixed" >"$d/Mixed.Case.TXT"
    head -c 3000000 /dev/urandom >"$d/nested/medium.bin"
    head -c 4097 /dev/urandom >"$d/nested/level2/odd-size.bin"
    chmod 0755 "$d/nested/one.txt"
    chmod 0600 "$d/Mixed.Case.TXT"
    for f in "$@"; do
        case $f in
        many=*) many=${f#many=}
            mkdir "$d/many"
            (cd "$d/many" && seq -f 'entry-%05g' 1 "$many" | xargs touch) ;;
        big) head -c 100M /dev/urandom >"$d/big.bin" ;;
        sparse)
            truncate -s 20M "$d/sparse.bin"
            echo "in the middle" | dd of="$d/sparse.bin" bs=1 seek=7340032 conv=notrunc 2>/dev/null
            echo "near the end" | dd of="$d/sparse.bin" bs=1 seek=20000000 conv=notrunc 2>/dev/null ;;
        links)
            ln -s nested/one.txt "$d/rel-link"
            ln -s /etc/hostname "$d/abs-link"
            ln -s does/not/exist "$d/dangling-link"
            ln -s "$(printf 'long/%.0s' $(seq 1 30))target" "$d/long-link"    # > 60 bytes
            ln -s ../../one.txt "$d/nested/level2/up-link" ;;
        hardlinks)
            echo "linked" >"$d/nested/hard-a"
            ln "$d/nested/hard-a" "$d/hard-b"
            ln "$d/nested/hard-a" "$d/dir with space/hard-c" ;;
        special)
            mkfifo "$d/fifo"
            mknod "$d/char-dev" c 1 3
            mknod "$d/block-dev" b 259 70000 ;;
        owners)
            chown 1234:5678 "$d/nested/one.txt"
            chown 0:100 "$d/dir with space"
            chmod 4755 "$d/nested/medium.bin" ;;
        emoji) echo "smile" >"$d/emoji 😀.txt" ;;
        esac
    done
    # timestamps last (creating entries changes their directory's)
    touch -h -d '2010-05-06 07:08:09.123456789' "$d/nested/one.txt" "$d/empty file"
    touch -d '1999-12-31 23:59:58.5' "$d/日本語.txt"
    touch -d '2038-01-19 03:14:10.987654321' "$d/Mixed.Case.TXT"
    touch -d '2021-02-03 04:05:06.700000000' "$d/nested/level2" "$d/empty dir"
    touch -d '2020-01-01 00:00:00' "$d/nested"
}

# part_disk OUT LABEL IMG...: a raw disk with partition table LABEL (dos,
# gpt) holding each IMG as a partition (1 MiB aligned), type by file system.
part_disk() {
    local out=$1 label=$2 off=1048576 img sz script; shift 2
    script="label: $label"$'\n'
    for img in "$@"; do
        sz=$(stat -c %s "$img")
        script+="start=$((off / 512)), size=$((sz / 512))"$'\n'
        off=$((off + (sz + 1048575) / 1048576 * 1048576))
    done
    truncate -s $((off + 1048576)) "$out"
    echo "$script" | sfdisk -q "$out" >/dev/null || return 1
    off=1048576
    for img in "$@"; do
        sz=$(stat -c %s "$img")
        dd if="$img" of="$out" bs=1M seek=$((off / 1048576)) conv=notrunc,sparse status=none || return 1
        off=$((off + (sz + 1048575) / 1048576 * 1048576))
    done
}

big_checks() {   # big_checks FS MNT: the 10 000-entry directory and the 100 MiB file
    local fs=$1 m=$2 t0 t1 n
    t0=$(ms); n=$(ls "$m/many" | wc -l); t1=$(ms)
    diag "$fs: ls of the 10 000-entry directory: $((t1 - t0)) ms"
    t0=$(ms); ls -l "$m/many" >"$T/.ls"; t1=$(ms)
    diag "$fs: ls -l of it (10 000 getattr): $((t1 - t0)) ms"
    if [ "$n" -eq 10000 ] && [ "$(grep -c '^-' "$T/.ls")" -eq 10000 ] && [ $((t1 - t0)) -lt 30000 ]; then
        ok "$fs: 10 000-entry directory lists in full ($((t1 - t0)) ms for ls -l)"
    else
        not_ok "$fs: 10 000-entry directory lists in full" "$n names, $((t1 - t0)) ms"
    fi
    t0=$(ms); sha256sum "$m/big.bin" >/dev/null; t1=$(ms)
    diag "$fs: reading the 100 MiB file: $((t1 - t0)) ms"
}

# ==================================================================== ext4
SRC=$T/src-ext
mk_tree "$SRC" many=10000 big sparse links hardlinks special owners emoji
# a /boot of the root file system's own, hidden by p2 mounted over it
mkdir -p "$SRC/boot" "$T/src-boot/grub"
echo "under the mount" >"$SRC/boot/only-in-p1"
echo "boot config" >"$T/src-boot/grub/grub.cfg"
echo "kernel" >"$T/src-boot/vmlinuz"
check "ext4: mkfs.ext4 -d makes the root file system" \
    mkfs.ext4 -q -F -L vdisk-root -d "$SRC" "$T/ext-root.img" 400M
check "ext4: mkfs.ext4 -d makes the boot file system" \
    mkfs.ext4 -q -F -L vdisk-boot -d "$T/src-boot" "$T/ext-boot.img" 16M
# mkfs.ext4 -d keeps whole seconds: give two inodes nanoseconds (debugfs
# *_extra = ns << 2) so the view's nanoseconds are checked too
check "ext4: debugfs sets nanosecond timestamps" debugfs -w \
    -R "sif /nested/one.txt mtime_extra $((123456789 << 2))" "$T/ext-root.img"
debugfs -w -R "sif /nested/level2 mtime_extra $((700000000 << 2))" "$T/ext-root.img" >/dev/null 2>&1
# ... and it stores 2038-01-19 03:14:10 without the epoch bit (as 1901): add it
debugfs -w -R "sif /Mixed.Case.TXT mtime_extra $((987654321 << 2 | 1))" "$T/ext-root.img" >/dev/null 2>&1
part_disk "$T/ext.raw" dos "$T/ext-root.img" "$T/ext-boot.img"
check "ext4: the disk converts to qcow2" qemu-img convert -O qcow2 "$T/ext.raw" "$T/ext.qcow2"
rm -f "$T/ext.raw"

M=$T/m-ext
if view_mount "ext4: vdisk-mount -m p1 IMAGE MNT" -m p1 "$T/ext.qcow2" "$M"; then
    same_tree "ext4: tree equals the source (names, types, sizes, contents, links, nlink, mode, owner, rdev, mtime to 1 s)" \
        "$SRC" "$M" --mtime-res 1000000000 --mode --owner --nlink --rdev --ignore lost+found
    t=$(stat -c '%y' "$M/nested/one.txt")
    if [ "$t" = "2010-05-06 07:08:09.123456789 +0000" ]; then
        ok "ext4: nanoseconds of mtime shown"
    else
        not_ok "ext4: nanoseconds of mtime shown" "got $t"
    fi
    [ "$(stat -c %h "$M/hard-b")" -eq 3 ] && [ "$(stat -c %i "$M/hard-b")" = "$(stat -c %i "$M/nested/hard-a")" ] &&
        ok "ext4: hard links share inode number and count 3" ||
        not_ok "ext4: hard links share inode number and count 3" "$(stat -c '%n %i %h' "$M/hard-b" "$M/nested/hard-a")"
    [ "$(stat -c '%F %t:%T' "$M/block-dev")" = "block special file 103:11170" ] &&
        [ "$(stat -c '%F' "$M/fifo")" = "fifo" ] &&
        ok "ext4: FIFO and device nodes listed with their type and numbers" ||
        not_ok "ext4: FIFO and device nodes listed with their type and numbers" \
            "$(stat -c '%n %F %t:%T' "$M/block-dev" "$M/fifo")"
    if ! head -c1 "$M/char-dev" >/dev/null 2>"$T/.err" && grep -q 'Permission denied' "$T/.err"; then
        ok "ext4: a device node does not open (EACCES: the mount is nodev)"
    else
        not_ok "ext4: a device node does not open" "$(cat "$T/.err")"
    fi
    cmp -s <(head -c 7340032 /dev/zero) <(head -c 7340032 "$M/sparse.bin") &&
        ok "ext4: the sparse file's hole reads as zeros" ||
        not_ok "ext4: the sparse file's hole reads as zeros"
    erofs "ext4: opening a file for writing fails with EROFS" "$M/nested/one.txt"
    big_checks ext4 "$M"
    # several readers at once (FUSE serves them from several threads)
    for f in big.bin nested/medium.bin sparse.bin nested/level2/odd-size.bin; do
        (cd "$M" && sha256sum "$f") >"$T/par.$(basename "$f")" &
    done
    ls -lR "$M" >/dev/null &
    wait
    if cat "$T"/par.* | (cd "$SRC" && sha256sum -c --quiet) >"$T/.err" 2>&1; then
        ok "ext4: four files read at once (and ls -lR beside) match the source"
    else
        not_ok "ext4: four files read at once match the source" "$(cat "$T/.err")"
    fi
    view_unmount "ext4: vdisk-mount -u returns 0 and the serving process is gone" "$M"
fi

# READDIRPLUS: a listing hands the kernel each entry's attributes, so ls -l
# of the 10 000-entry directory must not cost a LOOKUP per name (libfuse's
# debug log counts the requests); the listing spans many replies, so it also
# checks that each reply resumes where the last stopped.
mkdir -p "$M"
"$VDISK_MOUNT" -f -o debug -m p1 "$T/ext.qcow2" "$M" >"$T/fg.log" 2>&1 &
fg=$!
on_exit "kill $fg 2>/dev/null; wait $fg 2>/dev/null"
for _ in $(seq 100); do [ -e "$M/many" ] && break; sleep 0.05; done
ls -l --time-style=+%s "$M/many" >"$T/.lsplus" 2>"$T/.err"
lookups=$(grep -c 'opcode: LOOKUP' "$T/fg.log")
plus=$(grep -c 'opcode: READDIRPLUS' "$T/fg.log")
if [ "$(grep -c '^-' "$T/.lsplus")" -eq 10000 ] && [ "$lookups" -lt 100 ] && [ "$plus" -gt 1 ]; then
    ok "ext4: ls -l of 10 000 entries: $plus READDIRPLUS replies, $lookups LOOKUPs"
else
    not_ok "ext4: ls -l of 10 000 entries without a LOOKUP per name" \
        "$(grep -c '^-' "$T/.lsplus") files listed, $plus READDIRPLUS, $lookups LOOKUP" "$(cat "$T/.err")"
fi
(cd "$SRC/many" && ls -l --time-style=+%s) | awk '{print $1, $5, $6, $7}' >"$T/.want"
awk 'NR > 1 {print $1, $5, $6, $7}' "$T/.lsplus" >"$T/.got"
if [ "$(sed 1d "$T/.want" | sort | uniq | wc -l)" -eq 10000 ] && cmp -s <(sed 1d "$T/.want") "$T/.got"; then
    ok "ext4: that listing has every name once, with the source's mode, size and mtime"
else
    not_ok "ext4: READDIRPLUS listing equals the source" "$(diff <(sed 1d "$T/.want") "$T/.got" | head -n 5)"
fi
check "ext4: -u the foreground debug mount" "$VDISK_MOUNT" -u "$M"
wait $fg 2>/dev/null

if view_mount "ext4: -m p1:/ -m p2:/boot" -m p1:/ -m p2:/boot "$T/ext.qcow2" "$M"; then
    fresh=$(stat -c '%i %h %a %Y' "$M/boot")       # a LOOKUP: the mounted root
    view_unmount "ext4: unmount" "$M"
fi
if view_mount "ext4: -m p1:/ -m p2:/boot again" -m p1:/ -m p2:/boot "$T/ext.qcow2" "$M"; then
    ls -l "$M" >/dev/null                           # READDIRPLUS of / names boot first
    listed=$(stat -c '%i %h %a %Y' "$M/boot")
    [ "$listed" = "$fresh" ] && [ ! -e "$M/boot/only-in-p1" ] &&
        ok "ext4: /boot listed in / has the mounted root's attributes, not p1's own /boot" ||
        not_ok "ext4: /boot listed in / has the mounted root's attributes" \
            "after listing: $listed, fresh lookup: $fresh"
    same_tree "ext4: /boot shows the second file system" "$T/src-boot" "$M/boot" \
        --mtime-res 1000000000 --mode --owner --ignore lost+found
    [ -f "$M/nested/level2/level3/deep.txt" ] && [ "$(cat "$M/hard-b")" = linked ] &&
        ok "ext4: / shows the first file system beside /boot" ||
        not_ok "ext4: / shows the first file system beside /boot"
    view_unmount "ext4: unmount the two-file-system view" "$M"
fi

if view_mount "ext4: -m p2:/made/up/boot (directories on the way are made up)" \
    -m p2:/made/up/boot "$T/ext.qcow2" "$M"; then
    if find "$M" >"$T/.out" 2>"$T/.err" && [ ! -s "$T/.err" ] &&
        grep -qx "$M/made/up/boot/grub/grub.cfg" "$T/.out"; then
        ok "ext4: find walks the made-up directories without complaint"
    else
        not_ok "ext4: find walks the made-up directories without complaint" "$(head -n 5 "$T/.err")"
    fi
    view_unmount "ext4: unmount it" "$M"
fi

if view_mount "ext4: --all" --all "$T/ext.qcow2" "$M"; then
    if [ "$(ls "$M" | tr '\n' ' ')" = "p1 p2 " ] && [ "$(cat "$M/p2/grub/grub.cfg")" = "boot config" ] &&
        cmp -s "$SRC/nested/medium.bin" "$M/p1/nested/medium.bin"; then
        ok "ext4: --all shows p1/ and p2/"
    else
        not_ok "ext4: --all shows p1/ and p2/" "$(ls -la "$M")"
    fi
    view_unmount "ext4: unmount the --all view" "$M"
fi

# the kernel's ext4 on the disk view's p1 (no journal replay) against the view
if [ "$ROOT" -eq 1 ] && grep -qw ext4 /proc/filesystems; then
    D=$T/m-disk K=$T/m-kernel
    mkdir -p "$K"
    if view_mount "ext4: disk view for the loop mount" "$T/ext.qcow2" "$D" &&
        view_mount "ext4: filesystem view beside it" -m p1 "$T/ext.qcow2" "$M"; then
        on_exit "unmount_any '$K'"
        if mount -o ro,loop,noload "$D/p1" "$K" 2>"$T/.err"; then
            same_tree "ext4: the view equals the kernel's reading of p1 exactly (inode numbers, link counts, modes, owners, rdev, atime/mtime/ctime in ns)" \
                "$K" "$M" --exact
            umount "$K"
        else
            not_ok "ext4: loop-mount the disk view's p1" "$(cat "$T/.err")"
        fi
        view_unmount "ext4: unmount the filesystem view" "$M"
        view_unmount "ext4: unmount the disk view" "$D"
    fi
else
    skip "ext4: the view equals the kernel's reading of p1" "needs root and the kernel's ext4"
fi
rm -f "$T/ext-root.img" "$T/ext-boot.img"

# ==================================================================== FAT
# No symlinks, hard links or special files; mcopy keeps the mtime of files
# (not of directories); 150 entries where the others have 10 000.  libtsk
# shows FAT and exFAT times from 2038 on as 0 (1970): the tree stays before.
SRC=$T/src-fat
mk_tree "$SRC" many=150 sparse
rm -rf "$SRC/empty dir"            # mcopy -s drops empty directories
touch -d '2037-12-31 23:59:58' "$SRC/Mixed.Case.TXT"
check "fat32: mkfs.fat -F 32" mkfs.fat -C -F 32 -n VDISK32 "$T/fat32.img" 65536
check "fat32: mcopy -s -m fills it" mcopy -s -m -i "$T/fat32.img" "$SRC"/* ::
SRC16=$T/src-fat16
mk_tree "$SRC16"
rm -rf "$SRC16/empty dir"
touch -d '2037-12-31 23:59:58' "$SRC16/Mixed.Case.TXT"
check "fat16: mkfs.fat -F 16" mkfs.fat -C -F 16 -n VDISK16 "$T/fat16.img" 32768
check "fat16: mcopy -s -m fills it" mcopy -s -m -i "$T/fat16.img" "$SRC16"/* ::
part_disk "$T/fat.raw" gpt "$T/fat32.img" "$T/fat16.img"
check "fat: the GPT disk converts to qcow2" qemu-img convert -O qcow2 "$T/fat.raw" "$T/fat.qcow2"
rm -f "$T/fat.raw" "$T/fat32.img" "$T/fat16.img"
if view_mount "fat: -m p1 -m p2:/fat16" -m p1 -m p2:/fat16 "$T/fat.qcow2" "$M"; then
    same_tree "fat32: tree equals the source (mtime to 2 s; mode 0755/0644; owner: the mounting user)" \
        "$SRC" "$M" --mtime-res 2000000000 --no-dir-mtime --want-mode 755,644 \
        --want-owner "$(id -u):$(id -g)" --ignore fat16
    same_tree "fat16: tree equals the source" "$SRC16" "$M/fat16" --mtime-res 2000000000 --no-dir-mtime
    erofs "fat: opening a file for writing fails with EROFS" "$M/nested/one.txt"
    view_unmount "fat: unmount" "$M"
fi

# ============================================== fragmented files, by runs
# Files whose data is plain blocks are read straight from the image by their
# block runs (fsview-file.c), spliced into FUSE replies: files in ~100 pieces
# (ext4 and FAT32 with every other small file deleted before they were
# written) and a sparse file, read by O_DIRECT at random places and sizes.
F=$T/frag
mkdir -p "$F/small"
for i in $(seq 1 200); do head -c 32768 /dev/urandom >"$F/small/f$i"; done
head -c 5000000 /dev/urandom >"$F/frag.bin"
truncate -s 9M "$F/sparse.bin"
echo "in the middle" | dd of="$F/sparse.bin" bs=1 seek=4200000 conv=notrunc status=none
head -c 300000 /dev/urandom | dd of="$F/sparse.bin" bs=4096 seek=1700 conv=notrunc status=none
check "runs: mkfs.ext4 -d with 200 small files" mkfs.ext4 -q -F -b 4096 -d "$F/small" "$F/ext.img" 32M
for i in $(seq 1 2 200); do echo "rm f$i"; done >"$F/cmds"
echo "write $F/frag.bin frag.bin" >>"$F/cmds"
echo "write $F/sparse.bin sparse.bin" >>"$F/cmds"
debugfs -w -f "$F/cmds" "$F/ext.img" >/dev/null 2>&1
n=$(debugfs -R "ex frag.bin" "$F/ext.img" 2>/dev/null | grep -c '^ *[0-9]')
[ "$n" -ge 20 ] && ok "runs: ext4 frag.bin is in $n extents" || not_ok "runs: ext4 frag.bin is fragmented" "$n extents"
check "runs: mkfs.fat -F 32" mkfs.fat -C -F 32 -n FRAG "$F/fat.img" 40000
check "runs: mcopy the small files" mcopy -i "$F/fat.img" "$F"/small/f* ::
for i in $(seq 1 2 200); do mdel -i "$F/fat.img" "::f$i"; done
check "runs: mcopy frag.bin into the holes" mcopy -i "$F/fat.img" "$F/frag.bin" ::
part_disk "$F/disk.raw" gpt "$F/ext.img" "$F/fat.img"
check "runs: the disk converts to qcow2" qemu-img convert -O qcow2 "$F/disk.raw" "$F/disk.qcow2"
rm -rf "$F/small" "$F/disk.raw" "$F/ext.img" "$F/fat.img"
if view_mount "runs: -m p1 -m p2:/fat" -m p1 -m p2:/fat "$F/disk.qcow2" "$M"; then
    spid=$(sed -n "s|^.* $M .* - fuse.vdisk vdisk:\([0-9]*\):.*|\1|p" /proc/self/mountinfo)
    pipe_max=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
    if [ "$pipe_max" -lt $(( (128 << 10) + 19 * 4096 )) ]; then
        skip "runs: file reads are spliced" "/proc/sys/fs/pipe-max-size is $pipe_max: too small"
    else
        frag_read() { dd if="$M/frag.bin" of=/dev/null iflag=direct bs=1M count=2 skip=$((RANDOM % 3)) status=none; }
        syscall_seen "runs: reads of a file's blocks are spliced from the image file" "$spid" splice frag_read
    fi
    if python3 - "$M" "$F" >"$T/.rr" 2>&1 <<'PY'
import mmap, os, random, sys
mnt, src = sys.argv[1], sys.argv[2]
random.seed(7)
buf = mmap.mmap(-1, 4 << 20)
for name, want_name in (("frag.bin", "frag.bin"), ("sparse.bin", "sparse.bin"),
                        ("fat/FRAG.BIN", "frag.bin"), ("fat/frag.bin", "frag.bin")):
    path = os.path.join(mnt, name)
    if not os.path.exists(path):
        continue
    want = open(os.path.join(src, want_name), "rb").read()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    size = os.fstat(fd).st_size
    if size != len(want):
        sys.exit(f"{name}: size {size}, want {len(want)}")
    for _ in range(300):
        n = random.choice([4096, 8192, 65536, 131072, 1 << 20, 3 << 20, 4 << 20])
        off = random.randrange(0, size + 8192) // 4096 * 4096
        got = os.preadv(fd, [memoryview(buf)[:n]], off)
        exp = want[off:off + n]
        if got != len(exp) or buf[:got] != exp:
            sys.exit(f"{name}: {n} bytes at {off}: got {got} bytes, differ")
    os.close(fd)
    with open(path, "rb") as f:      # and through the page cache, odd places
        for _ in range(200):
            off, n = random.randrange(0, size), random.randrange(1, 300000)
            f.seek(off)
            if f.read(n) != want[off:off + n]:
                sys.exit(f"{name}: buffered {n} bytes at {off} differ")
    print(name, "ok")
PY
    then
        [ "$(grep -c ' ok$' "$T/.rr")" -eq 3 ] &&
            ok "runs: direct and buffered reads at random places equal the source (ext4 fragmented, ext4 sparse, FAT32 fragmented)" ||
            not_ok "runs: all three files were read" "$(cat "$T/.rr")"
    else
        not_ok "runs: reads at random places equal the source" "$(cat "$T/.rr")"
    fi
    view_unmount "runs: unmount" "$M"
fi
rm -rf "$F"

# ==================================================================== NTFS
# Filled through ntfs-3g (root): no FIFOs, device nodes or symlinks (ntfs-3g
# stores those as Interix files, which this view shows as the regular files
# they are on disk); one more file copied by ntfscp without mounting.
if [ "$ROOT" -eq 1 ]; then
    SRC=$T/src-ntfs
    mk_tree "$SRC" many=10000 big sparse hardlinks
    truncate -s 300M "$T/ntfs.img"
    check "ntfs: mkntfs" mkntfs -q -F -f -L VdiskNTFS "$T/ntfs.img"
    N=$T/m-ntfs3g
    mkdir -p "$N"
    on_exit "unmount_any '$N'"
    if ntfs-3g "$T/ntfs.img" "$N" 2>"$T/.err" && cp -a "$SRC/." "$N/" && umount "$N"; then
        ok "ntfs: filled through ntfs-3g"
    else
        not_ok "ntfs: filled through ntfs-3g" "$(cat "$T/.err")"
    fi
    head -c 70000 /dev/urandom >"$T/ntfscp.bin"
    check "ntfs: ntfscp copies a file in" ntfscp -q "$T/ntfs.img" "$T/ntfscp.bin" /ntfscp.bin
    part_disk "$T/ntfs.raw" dos "$T/ntfs.img"
    rm -f "$T/ntfs.img"
    check "ntfs: the disk converts to qcow2" qemu-img convert -O qcow2 "$T/ntfs.raw" "$T/ntfs.qcow2"
    rm -f "$T/ntfs.raw"
    if view_mount "ntfs: -m /dev/sda1" -m /dev/sda1 "$T/ntfs.qcow2" "$M"; then
        same_tree "ntfs: tree equals the source (contents, hard-link counts, mtime to 100 ns, mode 0755/0644)" \
            "$SRC" "$M" --mtime-res 100 --nlink --want-mode 755,644 --no-dir-mtime --ignore ntfscp.bin
        same_file "ntfs: the file ntfscp copied reads back" "$T/ntfscp.bin" "$M/ntfscp.bin"
        big_checks ntfs "$M"
        view_unmount "ntfs: unmount" "$M"
    fi
    # ntfs-3g on the disk view's p1 against the view
    D=$T/m-disk
    if view_mount "ntfs: disk view for ntfs-3g" "$T/ntfs.qcow2" "$D" &&
        view_mount "ntfs: filesystem view beside it" -m 1 "$T/ntfs.qcow2" "$M"; then
        if ntfs-3g -o ro "$D/p1" "$N" 2>"$T/.err"; then
            same_tree "ntfs: the view equals ntfs-3g's reading of p1 (inode numbers, link counts, mtime in 100 ns)" \
                "$N" "$M" --mtime-res 1 --nlink
            umount "$N"
        else
            not_ok "ntfs: ntfs-3g mounts the disk view's p1" "$(cat "$T/.err")"
        fi
        view_unmount "ntfs: unmount the filesystem view" "$M"
        view_unmount "ntfs: unmount the disk view" "$D"
    fi
else
    skip "ntfs: filled through ntfs-3g" "needs root to mount ntfs-3g"
fi

# =================================================================== exFAT
if [ "$ROOT" -eq 1 ]; then
    # exfat-fuse wants a block device when root runs it: loop devices
    SRC=$T/src-exfat
    mk_tree "$SRC" many=500 sparse
    touch -d '2037-12-31 23:59:58' "$SRC/Mixed.Case.TXT"
    truncate -s 64M "$T/exfat.img"
    check "exfat: mkfs.exfat" mkfs.exfat -L VDISKEX "$T/exfat.img"
    X=$T/m-exfat
    mkdir -p "$X"
    on_exit "unmount_any '$X'"
    if L=$(losetup -f --show "$T/exfat.img" 2>"$T/.err") &&
        mount.exfat-fuse "$L" "$X" >"$T/.err" 2>&1 && cp -r --preserve=timestamps "$SRC/." "$X/" &&
        umount "$X" && losetup -d "$L"; then
        ok "exfat: filled through exfat-fuse"
    else
        not_ok "exfat: filled through exfat-fuse" "$(cat "$T/.err")"
        [ -n "${L:-}" ] && losetup -d "$L" 2>/dev/null
    fi
    part_disk "$T/exfat.raw" dos "$T/exfat.img"
    rm -f "$T/exfat.img"
    if view_mount "exfat: -m p1" -m p1 "$T/exfat.raw" "$M"; then
        same_tree "exfat: tree equals the source (mtime to 2 s)" "$SRC" "$M" \
            --mtime-res 2000000000 --want-mode 755,644
        D=$T/m-disk
        if view_mount "exfat: disk view for exfat-fuse" "$T/exfat.raw" "$D"; then
            if L=$(losetup -r -f --show "$D/p1" 2>"$T/.err") &&
                mount.exfat-fuse -o ro "$L" "$X" >"$T/.err" 2>&1; then
                same_tree "exfat: the view equals exfat-fuse's reading of p1 (mtime to 2 s)" "$X" "$M" \
                    --mtime-res 2000000000
                umount "$X"
                losetup -d "$L"
            else
                [ -n "${L:-}" ] && losetup -d "$L" 2>/dev/null
                not_ok "exfat: exfat-fuse mounts the disk view's p1" "$(cat "$T/.err")"
            fi
            view_unmount "exfat: unmount the disk view" "$D"
        fi
        view_unmount "exfat: unmount" "$M"
    fi
    rm -f "$T/exfat.raw"
else
    skip "exfat: filled through exfat-fuse" "needs root to mount exfat-fuse"
fi

# ===================================================================== ISO
# libtsk reads the Joliet names (else the ISO 9660 ones) and not Rock Ridge:
# no symlinks, no ';' (Joliet has none), no owners or permissions.
SRC=$T/src-iso
mk_tree "$SRC" many=1000 sparse
mv "$SRC/semi;colon & amp" "$SRC/semi colon & amp"
check "iso9660: xorriso builds the ISO (Rock Ridge, Joliet)" \
    xorriso -as mkisofs -quiet -R -J -V VDISK_ISO -o "$T/iso.raw" "$SRC"
if view_mount "iso9660: -m disk" -m disk "$T/iso.raw" "$M"; then
    same_tree "iso9660: tree equals the source (mtime to 1 s)" "$SRC" "$M" --mtime-res 1000000000
    view_unmount "iso9660: unmount" "$M"
fi
rm -rf "$T/src-iso" "$T/iso.raw"

# ============================================================= real images
# Files seen through the view against fls -r / icat on a raw copy.
# real_image DESC IMAGE OFFSET_SECTORS PART: PART is what -m takes.
cat >"$T/fls.py" <<'EOF'
# fls.py FLS_OUTPUT KIND: the entries the view should show, one per line:
# "TYPE INODE PATH" (deleted, virtual, system and stream entries left out).
import re, sys
kind = sys.argv[2]
dropped = []
for line in open(sys.argv[1], encoding="utf-8", errors="surrogateescape"):
    m = re.match(r"(\S)/(\S) (\*\s+)?([0-9-]+)(\(realloc\))?:\t(.*)$", line.rstrip("\n"))
    if not m or m.group(3): continue
    t, inode, path = m.group(2), m.group(4), m.group(6)
    top = path.split("/")[0]
    if any(path.startswith(d + "/") for d in dropped): continue
    dropped.append(path)
    if t in "vV" or top == "$OrphanFiles": continue
    base = inode.split("-")[0]
    if kind == "ntfs" and (int(base) < 16 or ":" in path): continue
    if kind == "hfs" and (int(base) < 16 or top in ("^^^^HFS+ Private Data",)
                          or top.startswith(".HFS+ Private Directory Data")): continue
    if kind == "fat" and "/" not in path and path.endswith(" (Volume Label Entry)"): continue
    if path.split("/")[-1] in (".", ".."): continue
    dropped.pop()
    print(t, inode, path)
EOF
real_image() {
    local desc=$1 img=$2 off=$3 part=$4 kind=$5 raw=$T/real.raw bad=0 n=0 t inode path target
    qemu-img convert -O raw "$img" "$raw" 2>"$T/.err" || { not_ok "$desc: qemu-img reads it" "$(cat "$T/.err")"; return; }
    fls -r -p -o "$off" "$raw" >"$T/fls.txt" 2>"$T/.err" || { not_ok "$desc: fls lists it" "$(cat "$T/.err")"; return; }
    python3 "$T/fls.py" "$T/fls.txt" "$kind" >"$T/want.txt"
    if ! view_mount "$desc: mount -m $part" -m "$part" "$img" "$M"; then return; fi
    (cd "$M" && find . -mindepth 1 -printf '%P\n' | sort) >"$T/got.txt"
    cut -d' ' -f3- "$T/want.txt" | sort >"$T/want-paths.txt"
    if cmp -s "$T/want-paths.txt" "$T/got.txt"; then
        ok "$desc: the view lists exactly fls's allocated entries ($(wc -l <"$T/got.txt"))"
    else
        not_ok "$desc: the view lists exactly fls's allocated entries" \
            "$(diff "$T/want-paths.txt" "$T/got.txt" | head -n 10)"
    fi
    while read -r t inode path; do
        case $t in
        r) n=$((n + 1))
            if [ "$(icat -o "$off" "$raw" "$inode" | sha256sum)" != "$(sha256sum <"$M/$path")" ]; then
                bad=$((bad + 1)); diag "content differs: $path"
            fi ;;
        l) n=$((n + 1))      # istat names an inline target; else the data is the target
            target=$(istat -o "$off" "$raw" "$inode" | sed -n 's/^symbolic link to: //p')
            [ -n "$target" ] || target=$(icat -o "$off" "$raw" "$inode")
            if [ "$target" != "$(readlink "$M/$path")" ]; then
                bad=$((bad + 1)); diag "link target differs: $path"
            fi ;;
        esac
    done <"$T/want.txt"
    [ "$bad" -eq 0 ] && ok "$desc: $n files and links read as icat reads them" ||
        not_ok "$desc: $bad of $n files and links differ from icat"
    view_unmount "$desc: unmount" "$M"
    rm -f "$raw"
}
R=$SHARED/realimages
if [ -d "$R" ]; then
    real_image "real dfvfs/ext2.qcow2 (ext2)" "$R/dfvfs/ext2.qcow2" 0 disk ext
    real_image "real dfvfs/ext2.vmdk (ext2)" "$R/dfvfs/ext2.vmdk" 0 disk ext
    real_image "real dfvfs/history/image.qcow2 (ext2)" "$R/dfvfs/history/image.qcow2" 0 disk ext
    real_image "real dfvfs/windows_volume.qcow2 (NTFS)" "$R/dfvfs/windows_volume.qcow2" 0 disk ntfs
    real_image "real dfvfs/history/vsstest.qcow2 (NTFS)" "$R/dfvfs/history/vsstest.qcow2" 0 disk ntfs
    # HFS+ and FAT exist only in Apple disk images, which the image library
    # does not read yet: qemu-img converts them to qcow2 first
    for x in "dfvfs/hfsplus_zlib.dmg 40 p1 hfs" "node-udif/raw.dmg 0 disk hfs" \
             "node-udif/compression-raw.dmg 128 p1 fat" "node-udif/compression-raw.dmg 2176 p2 fat"; do
        set -- $x
        if qemu-img convert -O qcow2 "$R/$1" "$T/dmg.qcow2" 2>"$T/.err"; then
            real_image "real $1 $3 (${4^^}, dmg converted to qcow2 by qemu-img)" "$T/dmg.qcow2" "$2" "$3" "$4"
        else
            not_ok "real $1: qemu-img converts it" "$(cat "$T/.err")"
        fi
        rm -f "$T/dmg.qcow2"
    done
else
    skip "real images" "$R is absent"
fi

# ========================================================== damaged images
# Random sectors of the metadata area overwritten: the view either refuses
# to mount with a message, or serves what it can (errors allowed) and keeps
# running; the unmount is clean.
cat >"$T/damage.py" <<'EOF'
import random, sys
path, seed, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "r+b") as f:
    for _ in range(60):
        off = r.randrange(0, end // 512) * 512
        f.seek(off)
        if r.random() < 0.5:
            f.write(bytes(r.randrange(256) for _ in range(512)))
        else:                                   # flip a few bits only
            b = bytearray(f.read(512))
            for _ in range(8):
                b[r.randrange(512)] ^= 1 << r.randrange(8)
            f.seek(off)
            f.write(b)
EOF
SRC=$T/src-small
mk_tree "$SRC" many=300 links hardlinks
mkfs.ext4 -q -F -d "$SRC" "$T/clean-ext4.img" 16M >/dev/null 2>&1
mkfs.fat -C -F 32 "$T/clean-fat.img" 40000 >/dev/null 2>&1 &&
    mcopy -s -m -i "$T/clean-fat.img" "$SRC/nested" "$SRC/dir with space" ::
if [ "$ROOT" -eq 1 ]; then
    N=$T/m-ntfs3g
    truncate -s 16M "$T/clean-ntfs.img" && mkntfs -q -F -f "$T/clean-ntfs.img" >/dev/null 2>&1 &&
        ntfs-3g "$T/clean-ntfs.img" "$N" && { cp -r "$SRC/nested" "$SRC/many" "$N/" 2>/dev/null; umount "$N"; }
fi
for fs in ext4:4194304 fat:1048576 ntfs:8388608; do
    name=${fs%%:*}
    [ -f "$T/clean-$name.img" ] || continue
    for seed in 1 2 3 4 5; do
        cp "$T/clean-$name.img" "$T/bad.img"
        python3 "$T/damage.py" "$T/bad.img" "$seed" "${fs#*:}"
        rc=0
        mkdir -p "$M"
        on_exit "unmount_any '$M'"
        "$VDISK_MOUNT" -m disk "$T/bad.img" "$M" >"$T/.out" 2>"$T/.err" || rc=$?
        if [ "$rc" -ne 0 ]; then
            if [ "$rc" -eq 1 ] && [ -s "$T/.err" ] && ! _sanitizer_report "$T/.err"; then
                ok "damaged $name (seed $seed): refused with a message: $(head -c 120 "$T/.err")"
            else
                not_ok "damaged $name (seed $seed): refused cleanly" "exit $rc" "$(tail -n 5 "$T/.err")"
            fi
            continue
        fi
        # (a damaged inode may claim terabytes: read the first MiB of each file)
        timeout 60 find "$M" >/dev/null 2>&1
        timeout 60 find "$M" -type f -exec sh -c 'for f do head -c 1048576 "$f"; done' sh {} + \
            >/dev/null 2>&1
        timeout 60 find "$M" -type l -exec readlink {} + >/dev/null 2>&1
        if stat "$M" >/dev/null 2>&1 && mountpoint -q "$M"; then
            ok "damaged $name (seed $seed): served without crashing ($(find "$M" 2>/dev/null | wc -l) entries)"
        else
            not_ok "damaged $name (seed $seed): served without crashing" "the mount died"
        fi
        view_unmount "damaged $name (seed $seed): unmount" "$M"
    done
done

# sanitizer reports of processes whose stderr was not ours (the servers)
if ls "$T"/san.* >/dev/null 2>&1; then
    not_ok "no sanitizer reports from the serving processes" "$(head -n 40 "$T"/san.*)"
elif [ -n "${ASAN_OPTIONS:-}" ]; then
    ok "no sanitizer reports from the serving processes"
fi

done_testing
