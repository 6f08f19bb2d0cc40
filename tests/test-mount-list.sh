#!/usr/bin/env bash
# test-mount-list.sh — `vdisk-mount -l` and `-l --json` against the real
# tools: qemu-img info --output=json (format, sizes, compression, backing
# chain, snapshots), sfdisk --json (partition tables) and blkid -p on each
# partition cut out with dd (file system type, label, UUID).
# Disks: GPT with ext4, FAT32, FAT16, NTFS, exFAT, swap and an empty
# partition (odd partition name and image name to test JSON escaping); MBR
# with a bootable FAT16, ext4 and a logical ext2; a qcow2 backing chain with
# internal snapshots; unpartitioned ext4, FAT and ISO 9660 disks; real
# images with HFS+, FAT and NTFS.
# Thread model: sequential; no servers, no mounts.
. "$(dirname "$0")/lib.sh"
require qemu-img sfdisk sgdisk blkid mkfs.ext4 mkfs.ext2 mkfs.fat mkntfs mkfs.exfat mkswap xorriso \
    python3 dd
export LC_ALL=C.UTF-8

# ---------------------------------------------------------------- oracle

# oracle.py JSON RAW [qemu-info.json] [sfdisk.json]: compares our JSON with
# qemu-img info, sfdisk --json and blkid -p on slices of RAW.  Prints the
# differences and exits 1 when there are any.
cat >"$T/oracle.py" <<'EOF'
import json, os, re, subprocess, sys
ours = json.load(open(sys.argv[1], encoding="utf-8"))
raw = sys.argv[2]
qemu = json.load(open(sys.argv[3])) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
sfd = json.load(open(sys.argv[4]))["partitiontable"] if len(sys.argv) > 4 else None
errs = []
def eq(what, want, got):
    if want != got: errs.append(f"{what}: oracle {want!r}, ours {got!r}")

if qemu:
    q = qemu[0] if isinstance(qemu, list) else qemu
    eq("format", q["format"], ours["format"])
    eq("virtual_size", q["virtual-size"], ours["virtual_size"])
    eq("cluster_size", q.get("cluster-size"), ours["cluster_size"])
    eq("compression", q.get("format-specific", {}).get("data", {}).get("compression-type"),
       ours["compression"])
    eq("backing_file", q.get("backing-filename"), ours["backing_file"])
    qs = [{"id": s["id"], "name": s["name"], "date_sec": s["date-sec"], "date_nsec": s["date-nsec"],
           "vm_state_size": s["vm-state-size"], "vm_clock_nsec": s["vm-clock-nsec"]}
          for s in q.get("snapshots", [])]
    us = [{k: s[k] for k in ("id", "name", "date_sec", "date_nsec", "vm_state_size", "vm_clock_nsec")}
          for s in ours["snapshots"]]
    eq("snapshots", qs, us)
    if isinstance(qemu, list):          # --backing-chain: the layers below the top
        eq("backing_chain", [(os.path.realpath(i["filename"]), i["format"]) for i in qemu[1:]],
           [(os.path.realpath(b["filename"]), b["format"]) for b in ours["backing_chain"]])

def blkid(off, size):
    cut = raw + ".slice"
    subprocess.run(["dd", f"if={raw}", f"of={cut}", "bs=512", f"skip={off // 512}",
                    f"count={size // 512}", "status=none"], check=True)
    # udev format: *_ENC values escape bytes as \\xNN, nothing else
    r = subprocess.run(["blkid", "-p", "-o", "udev", cut], capture_output=True)
    os.unlink(cut)
    v = dict(l.split(b"=", 1) for l in r.stdout.splitlines() if b"=" in l)
    dec = lambda k: re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                           v[k]).decode() if k in v else None
    t = dec(b"ID_FS_TYPE")
    if t is None: return None
    if t == "vfat": t = {"FAT32": "fat32", "FAT16": "fat16", "FAT12": "fat12"}[dec(b"ID_FS_VERSION")]
    if t == "hfsplus": t = "hfs+"
    return {"type": t, "label": dec(b"ID_FS_LABEL_ENC"), "uuid": dec(b"ID_FS_UUID_ENC")}

def fs_eq(what, want, got):
    if want is None or got is None:
        eq(what, want, got); return
    for k in ("type", "label", "uuid"):
        if k == "uuid" and want["type"] == "hfs+": continue   # blkid derives one; we show none
        eq(f"{what} {k}", want[k], got.get(k))

pt = ours["partition_table"]
size = os.path.getsize(raw)
if sfd is None:
    # Linux (and so partition.c) reads the boot sector of a FAT or NTFS
    # volume that has no table as an empty DOS table; sfdisk sees none
    if pt is not None and not (pt["type"] == "dos" and pt["partitions"] == []):
        eq("partition_table", None, pt)
    fs_eq("whole-disk file system", blkid(0, size), ours["filesystem"])
else:
    eq("table type", sfd["label"], pt["type"])
    eq("sector size", sfd["sectorsize"], pt["sector_size"])
    if sfd["label"] == "dos": eq("disk id", int(sfd["id"], 16), int(pt["disk_id"], 16))
    else: eq("disk guid", sfd["id"].upper(), pt["disk_guid"])
    want = {}
    for p in sfd["partitions"]:
        n = int(p["node"][len(raw):])
        want[n] = p
    got = {p["number"]: p for p in pt["partitions"]}
    eq("partition numbers", sorted(want), sorted(got))
    for n in sorted(set(want) & set(got)):
        w, g = want[n], got[n]
        ss = sfd["sectorsize"]
        eq(f"p{n} start", w["start"] * ss, g["start"])
        eq(f"p{n} size", w["size"] * ss, g["size"])
        if sfd["label"] == "dos":
            eq(f"p{n} type", int(w["type"], 16), int(g["type"], 16))
            eq(f"p{n} bootable", bool(w.get("bootable")), g["bootable"])
        else:
            eq(f"p{n} type", w["type"].upper(), g["type"])
            eq(f"p{n} uuid", w["uuid"].upper(), g["uuid"])
            eq(f"p{n} name", w.get("name", ""), g["name"])
            eq(f"p{n} bootable", "LegacyBIOSBootable" in w.get("attrs", ""), g["bootable"])
        if g.get("extended"):
            eq(f"p{n} filesystem", None, g["filesystem"])
        else:
            fs_eq(f"p{n} filesystem", blkid(g["start"], g["size"]), g["filesystem"])
for e in errs: print(e)
sys.exit(1 if errs else 0)
EOF

# listed DESC IMAGE RAW [QEMU-INFO|-] [SFDISK]: -l and -l --json succeed, the
# JSON parses and agrees with the oracles.
listed() {
    local desc=$1 img=$2 raw=$3; shift 3
    check "$desc: -l" "$VDISK_MOUNT" -l "$img"
    cp "$T/.out" "$T/list.txt"
    if ! "$VDISK_MOUNT" -l --json "$img" >"$T/list.json" 2>"$T/.err" || _sanitizer_report "$T/.err"; then
        not_ok "$desc: -l --json" "$(tail -n 5 "$T/.err")"
        return
    fi
    if ! python3 -c 'import json,sys; json.load(open(sys.argv[1], encoding="utf-8"))' "$T/list.json" \
        2>"$T/.err"; then
        not_ok "$desc: -l --json is valid JSON" "$(tail -n 3 "$T/.err")"
        return
    fi
    if python3 "$T/oracle.py" "$T/list.json" "$raw" "$@" >"$T/.cmp" 2>&1; then
        ok "$desc: -l --json agrees with qemu-img, sfdisk and blkid"
    else
        not_ok "$desc: -l --json agrees with qemu-img, sfdisk and blkid" "$(head -n 20 "$T/.cmp")"
    fi
}

# build DISK LABEL SCRIPT-LINES... with IMG=path in each line: a raw disk whose
# partitions hold the images (placed 1 MiB-aligned, sized to the image).
build() {
    local out=$1 label=$2 off=2048 line img sz script; shift 2
    script="label: $label"$'\n'
    local imgs=()
    for line in "$@"; do
        img=${line%%|*}
        line=${line#*|}
        if [ -n "$img" ]; then sz=$(($(stat -c %s "$img") / 512)); else sz=8192; fi
        script+="start=$off, size=$sz, $line"$'\n'
        imgs+=("$off:$img")
        off=$(( (off + sz + 2047) / 2048 * 2048 ))
    done
    truncate -s $(( (off + 2048 + 34) * 512 )) "$out"
    echo "$script" | sfdisk -q "$out" >/dev/null || return 1
    for line in "${imgs[@]}"; do
        img=${line#*:}
        [ -n "$img" ] && dd if="$img" of="$out" bs=512 seek="${line%%:*}" conv=notrunc,sparse status=none
    done
    return 0
}

{
    mkfs.ext4 -q -F -L "root fs" "$T/ext4.img" 24M
    mkfs.fat -C -F 32 -n EFI "$T/fat32.img" 40000
    mkfs.fat -C -F 16 -n "MY DISK" "$T/fat16.img" 20000
    truncate -s 16M "$T/ntfs.img" && mkntfs -q -F -f -L "Daten ünï" "$T/ntfs.img"
    truncate -s 16M "$T/exfat.img" && mkfs.exfat -L "EXF Vol" "$T/exfat.img"
    truncate -s 8M "$T/swap.img" && chmod 600 "$T/swap.img" && mkswap -L swappy "$T/swap.img"
    mkfs.ext2 -q -F -L logical "$T/ext2.img" 8M
} >"$T/mkfs.log" 2>&1 || not_ok "file systems made" "$(tail -n 5 "$T/mkfs.log")"

# ---------------------------------------------------------------- GPT
G=$T/gpt.raw
if build "$G" gpt \
    "$T/ext4.img|type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"" \
    "$T/fat32.img|type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\", attrs=LegacyBIOSBootable" \
    "$T/fat16.img|type=EBD0A0A2-B9E5-4433-87C0-68B9B72699C7" \
    "$T/ntfs.img|type=EBD0A0A2-B9E5-4433-87C0-68B9B72699C7, name=\"data\"" \
    "$T/exfat.img|type=EBD0A0A2-B9E5-4433-87C0-68B9B72699C7" \
    "$T/swap.img|type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=\"swap\"" \
    "|type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"; then
    ok "gpt: disk made with sfdisk"
else
    not_ok "gpt: disk made with sfdisk"
fi
# a name JSON must escape: quote, backslash, UTF-8
check "gpt: sgdisk names partition 7" sgdisk -c '7:we"ird\ ünï' "$G"
sfdisk --json "$G" >"$T/gpt.sfdisk.json"
IMG="$T/gpt disk \"q\".qcow2"
check "gpt: converts to qcow2 (compressed)" qemu-img convert -c -O qcow2 "$G" "$IMG"
qemu-img info --output=json "$IMG" >"$T/gpt.qemu.json"
listed "gpt qcow2" "$IMG" "$G" "$T/gpt.qemu.json" "$T/gpt.sfdisk.json"
python3 - "$T/list.json" "$IMG" <<'EOF' >"$T/.cmp" 2>&1 && ok "gpt: the image name and partition name survive JSON escaping" || not_ok "gpt: the image name and partition name survive JSON escaping" "$(cat "$T/.cmp")"
import json, sys
j = json.load(open(sys.argv[1], encoding="utf-8"))
assert j["image"] == sys.argv[2], j["image"]
assert j["partition_table"]["partitions"][6]["name"] == 'we"ird\\ ünï', j["partition_table"]["partitions"][6]
assert j["partition_table"]["partitions"][6]["filesystem"] is None
EOF
for want in 'p1 +ext4 .*"root fs"' 'p2 +fat32 .*"EFI"' 'p4 +ntfs .*"Daten ünï"' 'p5 +exfat .*"EXF Vol"' \
            'p6 +swap .*"swappy".*not shown by the filesystem view' 'p7 +-$'; do
    grep -qE "^  $want" "$T/list.txt" || { not_ok "gpt: text listing shows '$want'" "$(cat "$T/list.txt")"; continue; }
    ok "gpt: text listing shows '$want'"
done

# ---------------------------------------------------------------- MBR
Mb=$T/mbr.raw
s1=$(( $(stat -c %s "$T/fat16.img") / 512 )) s2=$(( $(stat -c %s "$T/ext4.img") / 512 ))
s3=$(( $(stat -c %s "$T/ext2.img") / 512 ))
o2=$(( (2048 + s1 + 2047) / 2048 * 2048 ))
o3=$(( (o2 + s2 + 2047) / 2048 * 2048 ))
truncate -s $(( (o3 + 2048 + s3 + 2048) * 512 )) "$Mb"
if printf 'label: dos\nstart=2048, size=%s, type=e, bootable\nstart=%s, size=%s, type=83\nstart=%s, size=%s, type=5\nstart=%s, size=%s, type=83\n' \
        "$s1" "$o2" "$s2" "$o3" $((s3 + 2048)) $((o3 + 2048)) "$s3" | sfdisk -q "$Mb" >/dev/null 2>"$T/.err" &&
    dd if="$T/fat16.img" of="$Mb" bs=512 seek=2048 conv=notrunc,sparse status=none &&
    dd if="$T/ext4.img" of="$Mb" bs=512 seek="$o2" conv=notrunc,sparse status=none &&
    dd if="$T/ext2.img" of="$Mb" bs=512 seek=$((o3 + 2048)) conv=notrunc,sparse status=none; then
    ok "mbr: disk with a bootable, an extended and a logical partition made with sfdisk"
else
    not_ok "mbr: disk with a bootable, an extended and a logical partition made with sfdisk" "$(cat "$T/.err")"
fi
sfdisk --json "$Mb" >"$T/mbr.sfdisk.json"
listed "mbr raw" "$Mb" "$Mb" - "$T/mbr.sfdisk.json"

# ------------------------------------------------ backing chain, snapshots
check "chain: base" qemu-img convert -O qcow2 "$G" "$T/base.qcow2"
check "chain: mid over base" qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/mid.qcow2"
check "chain: top over mid" qemu-img create -q -f qcow2 -o compression_type=zstd \
    -b mid.qcow2 -F qcow2 "$T/top.qcow2"
check "chain: snapshot one" qemu-img snapshot -c "first one" "$T/top.qcow2"
check "chain: snapshot two" qemu-img snapshot -c second "$T/top.qcow2"
qemu-img info --backing-chain --output=json "$T/top.qcow2" >"$T/chain.qemu.json"
listed "chain top.qcow2" "$T/top.qcow2" "$G" "$T/chain.qemu.json" "$T/gpt.sfdisk.json"
grep -q 'first one' "$T/list.txt" && grep -q 'base.qcow2 (qcow2)' "$T/list.txt" &&
    ok "chain: text listing shows snapshots and the chain" ||
    not_ok "chain: text listing shows snapshots and the chain" "$(cat "$T/list.txt")"

# ------------------------------------------------------ whole-disk file systems
listed "unpartitioned ext4" "$T/ext4.img" "$T/ext4.img" -
listed "unpartitioned FAT32 (superfloppy)" "$T/fat32.img" "$T/fat32.img" -
listed "unpartitioned NTFS" "$T/ntfs.img" "$T/ntfs.img" -
listed "unpartitioned exFAT" "$T/exfat.img" "$T/exfat.img" -
mkdir -p "$T/isosrc" && echo x >"$T/isosrc/f"
xorriso -as mkisofs -quiet -R -J -V VDISK_LIST -o "$T/iso.raw" "$T/isosrc" 2>/dev/null
listed "ISO 9660" "$T/iso.raw" "$T/iso.raw" -
rm -f "$T"/*.img "$G" "$Mb" "$T/iso.raw"

# ------------------------------------------------------------ real images
R=$SHARED/realimages
if [ -d "$R" ]; then
    for x in dfvfs/ext2.qcow2 dfvfs/windows_volume.qcow2 dfvfs/history/vsstest.qcow2; do
        qemu-img convert -O raw "$R/$x" "$T/real.raw"
        qemu-img info --output=json "$R/$x" >"$T/real.qemu.json"
        listed "real $x" "$R/$x" "$T/real.raw" "$T/real.qemu.json"
        rm -f "$T/real.raw"
    done
    # HFS+ and FAT live in Apple disk images: qemu-img converts them first
    for x in dfvfs/hfsplus_zlib.dmg node-udif/raw.dmg node-udif/compression-raw.dmg; do
        qemu-img convert -O qcow2 "$R/$x" "$T/real.qcow2" 2>/dev/null &&
            qemu-img convert -O raw "$T/real.qcow2" "$T/real.raw"
        if sfdisk --json "$T/real.raw" >"$T/real.sfdisk.json" 2>/dev/null; then
            listed "real $x (converted to qcow2)" "$T/real.qcow2" "$T/real.raw" - "$T/real.sfdisk.json"
        else
            listed "real $x (converted to qcow2)" "$T/real.qcow2" "$T/real.raw" -
        fi
        rm -f "$T/real.raw" "$T/real.qcow2"
    done
else
    skip "real images" "$R is absent"
fi

done_testing
