#!/usr/bin/env bash
# test-partitions.sh — the partition-table reader against the real tools.
# Disks are made with sfdisk, sgdisk and fdisk (fdisk -b 4096 for 4096-byte
# sectors: sfdisk 2.38 has no --sector-size) over random content; the oracle
# is `sfdisk --json` (512-byte sectors) or `fdisk -b 4096 -l -o ...`.  Every
# disk is checked raw and converted to qcow2.  Partitions opened as slices
# (`bftest --part N`) must read exactly the bytes `dd` cuts from the raw disk,
# and writes through a slice must stay inside the partition.
# Thread model: sequential; no servers.
. "$(dirname "$0")/lib.sh"
require sfdisk sgdisk fdisk qemu-img python3 dd cmp

# ------------------------------------------------------------ the oracle

# oracle.py compare KIND ORACLE DEVICE OURS BACKUP: KIND is "sfdisk" (JSON)
#   or "fdisk" (fdisk -l -o text); DEVICE is the path the tool was given (the
#   partition number is what follows it in the node name).  Compares label,
#   id, sector size, and per partition number, start, size, type, name,
#   bootable (and uuid for GPT) with `bftest parts` output OURS.
# oracle.py ranges KIND ORACLE DEVICE: "number start_bytes length_bytes" per
#   partition, from the oracle alone.
cat >"$T/oracle.py" <<'EOF'
import json, re, sys

def from_sfdisk(path, dev):
    t = json.load(open(path))["partitiontable"]
    out = {"label": t["label"], "id": t["id"], "sectorsize": t["sectorsize"], "parts": {}}
    for p in t["partitions"]:
        n = int(p["node"][len(dev):])
        boot = p.get("bootable", False) if t["label"] == "dos" else \
            "LegacyBIOSBootable" in p.get("attrs", "")
        out["parts"][n] = {"start": p["start"], "size": p["size"], "type": p["type"],
                           "name": p.get("name", ""), "bootable": bool(boot),
                           "uuid": p.get("uuid")}
    return out

def from_fdisk(path, dev):
    # fdisk -l -o Device,Start,Sectors,Id,Boot (dos) or
    # Device,Start,Sectors,Type-UUID,UUID,Name (gpt): the last column may be empty.
    out = {"parts": {}}
    rows = False
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        m = re.match(r"Disklabel type: (\S+)", line)
        if m: out["label"] = m.group(1)
        m = re.match(r"Disk identifier: (\S+)", line)
        if m: out["id"] = m.group(1)
        m = re.match(r"Sector size \(logical/physical\): (\d+) bytes", line)
        if m: out["sectorsize"] = int(m.group(1))
        if line.startswith("Device"):
            rows = True
            continue
        if not rows or not line.startswith(dev):
            continue
        f = line.split(None, 5 if out["label"] == "gpt" else 4)
        n = int(f[0][len(dev):])
        p = {"start": int(f[1]), "size": int(f[2]), "bootable": False, "name": "", "uuid": None}
        if out["label"] == "gpt":
            p["type"], p["uuid"] = f[3], f[4]
            p["name"] = f[5].strip() if len(f) > 5 else ""
        else:
            p["type"] = f[3]
            p["bootable"] = len(f) > 4 and f[4].strip() == "*"
        out["parts"][n] = p
    return out

def load(kind, path, dev):
    return from_sfdisk(path, dev) if kind == "sfdisk" else from_fdisk(path, dev)

def compare(kind, oracle, dev, ours, backup):
    o = load(kind, oracle, dev)
    u = json.load(open(ours))
    errs = []
    for k in ("label", "sectorsize"):
        if o[k] != u[k]:
            errs.append(f"{k}: oracle {o[k]!r}, ours {u[k]!r}")
    if o["id"].lower() != u["id"].lower():
        errs.append(f"id: oracle {o['id']}, ours {u['id']}")
    if u["used_backup"] != (backup == "true"):
        errs.append(f"used_backup is {u['used_backup']}, wanted {backup}")
    mine = {p["number"]: p for p in u["partitions"]}
    if sorted(mine) != sorted(o["parts"]):
        errs.append(f"numbers: oracle {sorted(o['parts'])}, ours {sorted(mine)}")
    for n, p in o["parts"].items():
        q = mine.get(n)
        if not q:
            continue
        for k in ("start", "size", "type", "bootable") + (("name", "uuid") if o["label"] == "gpt" else ()):
            if p[k] != q.get(k, ""):
                errs.append(f"partition {n} {k}: oracle {p[k]!r}, ours {q.get(k)!r}")
    print("\n".join(errs) if errs else f"{len(mine)} partitions match")
    return not errs

if sys.argv[1] == "compare":
    sys.exit(0 if compare(*sys.argv[2:7]) else 1)
o = load(*sys.argv[2:5])
for n, p in sorted(o["parts"].items()):
    print(n, p["start"] * o["sectorsize"], p["size"] * o["sectorsize"])
EOF

# parts_match DESC KIND ORACLE DEVICE IMAGE BACKUP [bftest options...]
parts_match() {
    local desc=$1 kind=$2 oracle=$3 dev=$4 img=$5 backup=$6
    shift 6
    if "$BFTEST" "$@" parts "$img" >"$T/ours.json" 2>"$T/.err" && ! _sanitizer_report "$T/.err" &&
        python3 "$T/oracle.py" compare "$kind" "$oracle" "$dev" "$T/ours.json" "$backup" \
            >"$T/.cmp" 2>&1; then
        ok "$desc"
    else
        not_ok "$desc" "$(tail -n 20 "$T/.err" "$T/.cmp")"
    fi
}

# slices_match DESC KIND ORACLE DEVICE IMAGE RAW [bftest options...]: every
# partition the oracle lists, read through `bftest --part N cat`, equals the
# same byte range of the raw disk cut by dd.
slices_match() {
    local desc=$1 kind=$2 oracle=$3 dev=$4 img=$5 raw=$6 n s l bad="" count=0
    shift 6
    python3 "$T/oracle.py" ranges "$kind" "$oracle" "$dev" >"$T/ranges"
    while read -r n s l; do
        count=$((count + 1))
        if ! "$BFTEST" "$@" --part "$n" cat "$img" "$T/slice" 2>"$T/.err" || _sanitizer_report "$T/.err"; then
            bad+=" $n: $(tail -n 3 "$T/.err")"
            continue
        fi
        dd if="$raw" of="$T/want" bs=1M iflag=skip_bytes,count_bytes skip="$s" count="$l" status=none
        cmp -s "$T/slice" "$T/want" || bad+=" $n: contents differ;"
    done <"$T/ranges"
    if [ -z "$bad" ] && [ "$count" -gt 0 ]; then
        ok "$desc ($count partitions)"
    else
        not_ok "$desc" "partitions checked: $count;$bad"
    fi
}

# check_all NAME KIND ORACLE DEVICE RAW BACKUP [bftest options...]: table and
# slices, on the raw disk and on a qcow2 copy of it.
check_all() {
    local name=$1 kind=$2 oracle=$3 dev=$4 raw=$5 backup=$6
    shift 6
    parts_match "$name: table (raw)" "$kind" "$oracle" "$dev" "$raw" "$backup" "$@"
    slices_match "$name: partitions read as slices equal dd (raw)" "$kind" "$oracle" "$dev" \
        "$raw" "$raw" "$@"
    qemu-img convert -f raw -O qcow2 "$raw" "$raw.qcow2"
    parts_match "$name: table (qcow2)" "$kind" "$oracle" "$dev" "$raw.qcow2" "$backup" "$@"
    slices_match "$name: partitions read as slices equal dd (qcow2)" "$kind" "$oracle" "$dev" \
        "$raw.qcow2" "$raw" "$@"
}

# A disk of @1 MiB of random bytes, so every slice has something to compare.
random_disk() { head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1"; }

# ----------------------------------------------- MBR, 512-byte sectors

mbr=$T/mbr.img
random_disk "$mbr" 32
sfdisk -q "$mbr" >/dev/null <<'EOF'
label: dos
label-id: 0x1badcafe
start=2048, size=4096, type=83
size=4096, type=7, bootable
size=4096, type=c
size=20480, type=5
size=4096, type=83
size=4096, type=82
size=4096, type=8e
EOF
sfdisk --json "$mbr" >"$T/mbr.json"
check_all "MBR 3 primaries + 3 logicals" sfdisk "$T/mbr.json" "$mbr" "$mbr" false

# ------------------------------------------------ GPT, 512-byte sectors

gpt=$T/gpt.img
random_disk "$gpt" 32
sgdisk -o -U 11111111-2222-3333-4444-555555555555 \
    -n 1:2048:+4M -t 1:ef00 -c 1:"EFI system" \
    -n 2:0:+4M -t 2:8300 -c 2:root -A 2:set:2 \
    -n 3:0:+4M -t 3:8200 -c 3:swap \
    -n 5:0:+4M -t 5:0700 -c 5:"données" \
    -n 7:0:+2M -t 7:8e00 -c 7:"lvm 😀" "$gpt" >/dev/null
sfdisk --json "$gpt" >"$T/gpt.json"
check_all "GPT 5 named partitions" sfdisk "$T/gpt.json" "$gpt" "$gpt" false

# The primary header damaged: sfdisk reads the backup, so must we.
gptbad=$T/gptbad.img
cp "$gpt" "$gptbad"
printf '\xde\xad\xbe\xef' | dd of="$gptbad" bs=1 seek=$((512 + 40)) conv=notrunc status=none
sfdisk --json "$gptbad" >"$T/gptbad.json" 2>"$T/sfdisk.err"
check_all "GPT with a damaged primary header" sfdisk "$T/gptbad.json" "$gptbad" "$gptbad" true

# Both copies damaged: a clean error.
cp "$gptbad" "$T/gptdead.img"
printf '\xde\xad\xbe\xef' | dd of="$T/gptdead.img" bs=1 seek=$((32 * 1024 * 1024 - 512 + 40)) \
    conv=notrunc status=none
check_fails "GPT with both headers damaged: error" "no valid GPT.*CRC" "$BFTEST" parts "$T/gptdead.img"

# ---------------------------------------------- 4096-byte sectors (fdisk)

mbr4k=$T/mbr4k.img
random_disk "$mbr4k" 64
# o: new label; x i: disk id; n p 1 +8M, a (bootable), n p 2, t c, n e 3,
# three logicals (one swap).
printf '%s\n' o x i 0x4096abcd r n p 1 '' +8M a n p 2 '' +8M t 2 c n e 3 '' +32M \
    n l '' +4M n l '' +4M t 6 82 n l '' +4M w | fdisk -b 4096 "$mbr4k" >"$T/fdisk.log" 2>&1
fdisk -b 4096 -l -o Device,Start,Sectors,Id,Boot "$mbr4k" >"$T/mbr4k.txt"
check_all "MBR, 4096-byte sectors" fdisk "$T/mbr4k.txt" "$mbr4k" "$mbr4k" false --sector-size 4096

gpt4k=$T/gpt4k.img
random_disk "$gpt4k" 64
# g: new GPT; partitions 1, 2, 4 (3 left empty); types by GUID; names in
# expert mode.
printf '%s\n' g n 1 '' +8M n 2 '' +8M n 4 '' +4M \
    t 1 C12A7328-F81F-11D2-BA4B-00A0C93EC93B t 2 0FC63DAF-8483-4772-8E79-3D69D8477DE4 \
    x n 1 'EFI System' n 2 rootfs n 4 'data 4k' r w | fdisk -b 4096 "$gpt4k" >"$T/fdisk.log" 2>&1
fdisk -b 4096 -l -o Device,Start,Sectors,Type-UUID,UUID,Name "$gpt4k" >"$T/gpt4k.txt"
# No sector size given: the GPT header at 4096 must be found by itself.
check_all "GPT, 4096-byte sectors detected" fdisk "$T/gpt4k.txt" "$gpt4k" "$gpt4k" false

gpt4kbad=$T/gpt4kbad.img
cp "$gpt4k" "$gpt4kbad"
printf '\xde\xad\xbe\xef' | dd of="$gpt4kbad" bs=1 seek=$((4096 + 40)) conv=notrunc status=none
fdisk -b 4096 -l -o Device,Start,Sectors,Type-UUID,UUID,Name "$gpt4kbad" >"$T/gpt4kbad.txt" 2>/dev/null
parts_match "GPT 4096 with a damaged primary header: backup found" fdisk "$T/gpt4kbad.txt" \
    "$gpt4kbad" "$gpt4kbad" true
check_fails "GPT 4096 read with 512-byte sectors: error" "no valid GPT" \
    "$BFTEST" --sector-size 512 parts "$gpt4k"
check_fails "sector size 1024 refused" "sector size 1024" "$BFTEST" --sector-size 1024 parts "$gpt4k"

# ------------------------------------------------------ writes via slices

# write_region_ok DESC ORIG NEW FILE AT: NEW equals ORIG except FILE at byte AT.
write_region_ok() {
    local desc=$1 orig=$2 new=$3 file=$4 at=$5 n
    n=$(stat -c %s "$file")
    if cmp -s -n "$at" "$orig" "$new" && cmp -s -i "0:$at" -n "$n" "$file" "$new" &&
        cmp -s -i "$((at + n)):$((at + n))" "$orig" "$new"; then
        ok "$desc"
    else
        not_ok "$desc" "$(cmp "$orig" "$new" 2>&1 | head -n 2)"
    fi
}

w=$T/w.img
cp "$mbr" "$w"
read -r _ p5start p5len < <(python3 "$T/oracle.py" ranges sfdisk "$T/mbr.json" "$mbr" | grep '^5 ')
head -c 65536 /dev/urandom >"$T/w64k"

check "write inside logical partition 5" "$BFTEST" --rw --part 5 write "$w" 12345 "$T/w64k"
write_region_ok "only bytes inside partition 5 changed" "$mbr" "$w" "$T/w64k" $((p5start + 12345))

cp "$w" "$T/w.before"
check "write ending at the last byte of partition 5" \
    "$BFTEST" --rw --part 5 write "$w" $((p5len - 65536)) "$T/w64k"
write_region_ok "write at the end of partition 5 stays inside it" "$T/w.before" "$w" "$T/w64k" \
    $((p5start + p5len - 65536))

cp "$w" "$T/w.before"
check_fails "write past the end of partition 5 fails" "beyond the end" \
    "$BFTEST" --rw --part 5 write "$w" $((p5len - 100)) "$T/w64k"
check_fails "write starting at the end of partition 5 fails" "beyond the end" \
    "$BFTEST" --rw --part 5 write "$w" "$p5len" "$T/w64k"
check_fails "write to a partition of a read-only disk fails" "read-only" \
    "$BFTEST" --part 5 write "$w" 0 "$T/w64k"
same_file "failed writes left the disk unchanged" "$T/w.before" "$w"
check_fails "no partition 9" "no partition 9" "$BFTEST" --part 9 cat "$w" "$T/slice"

# The same on a GPT partition, whose neighbours are other partitions.
cp "$gpt" "$w"
read -r _ g3start _ < <(python3 "$T/oracle.py" ranges sfdisk "$T/gpt.json" "$gpt" | grep '^3 ')
check "write inside GPT partition 3" "$BFTEST" --rw --part 3 write "$w" 0 "$T/w64k"
write_region_ok "only bytes inside GPT partition 3 changed" "$gpt" "$w" "$T/w64k" "$g3start"

# ------------------------------------------------------- odd small disks

: >"$T/empty.img"
head -c 511 /dev/zero >"$T/511.img"
check "empty disk: no table" "$BFTEST" -f raw parts "$T/empty.img"
grep -q '"label": "none"' "$T/.out" && ok "empty disk reports label none" ||
    not_ok "empty disk reports label none" "$(cat "$T/.out")"
check "511-byte disk: no table" "$BFTEST" -f raw parts "$T/511.img"
# The first 512 bytes of the MBR disk: partitions past the end are left out.
head -c 512 "$mbr" >"$T/512.img"
check "512-byte copy of an MBR: read" "$BFTEST" -f raw parts "$T/512.img"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(not (d["label"]=="dos" and d["partitions"]==[]))' \
    "$T/.out" && ok "512-byte copy of an MBR: no partitions" ||
    not_ok "512-byte copy of an MBR: no partitions" "$(cat "$T/.out")"

done_testing
