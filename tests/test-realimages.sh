#!/usr/bin/env bash
# test-realimages.sh — images made by real tools ($SHARED/realimages: VMware,
# VirtualBox, Hyper-V, Windows, hdiutil, old and new qemu), against the
# manifest's record of how qemu-img 7.2 reads them.
#
#   qcow2 and raw rows:  bftest cat has the manifest's SHA-256 (disks up to
#                        2 GiB), the virtual size matches, and bftest map
#                        agrees with qemu-img map.
#   fuzzed/truncated:    qemu-iotests/afl5.img, qemu-iotests/afl9.vmdk and
#                        binwalk/qcow.bin are refused with a message.
#   every other format:  auto-detection must not silently show the container
#                        as a raw disk: the image either reads correctly (the
#                        SHA-256 matches) or is refused with a message naming
#                        its format.  The exception is what qemu's own probe
#                        calls raw: a fixed VHD (a footer only at the end).
#
# Stored .bz2/.gz files are decompressed into $T (sparse); ../shared is
# never written.  Every image is opened under a neutral name (img-N, no
# extension) so that a message "naming the format" cannot pass by quoting
# the file name.
. "$(dirname "$0")/lib.sh"
require sha256sum bzip2 gzip qemu-img python3

R=$SHARED/realimages
if [ ! -f "$R/manifest.tsv" ]; then
    skip "real images" "$R/manifest.tsv is absent (no ../shared next to the repository)"
    done_testing
fi

GiB=$((1 << 30))

# Regex a refusal message must match to name format $1 (qemu's name).
fmt_re() {
    case $1 in
    vpc) echo 'vpc|VHD|vhd' ;;
    qcow) echo 'qcow \(version 1\)|qcow1' ;;
    *) echo "$1" ;;
    esac
}

# Put the stored image $1 at $2: decompressed (sparse), or a symbolic link.
prep() {
    local src=$R/$1 dst=$2
    rm -f "$dst"
    case $src in
    *.bz2) bzip2 -dc "$src" | cp --sparse=always /dev/stdin "$dst" ;;
    *.gz) gzip -dc "$src" | cp --sparse=always /dev/stdin "$dst" ;;
    *) ln -s "$src" "$dst" ;;
    esac
}

# sha_of IMG [LIMIT]: SHA-256 of bftest cat (of the first LIMIT bytes).
sha_of() {
    if [ -n "${2:-}" ]; then
        "$BFTEST" cat "$1" 2>"$T/.err" | head -c "$2" | sha256sum | cut -d' ' -f1
    else
        "$BFTEST" cat "$1" 2>"$T/.err" | sha256sum | cut -d' ' -f1
    fi
}

# A raw-or-qcow2 row: size, bytes, map.
check_readable() {
    local name=$1 p=$2 fmt=$3 vsize=$4 sha=$5
    if ! "$BFTEST" info "$p" >"$T/.out" 2>"$T/.err" || _sanitizer_report "$T/.err"; then
        not_ok "$name: opens" "$(tail -n 5 "$T/.err")"
        return
    fi
    local got_fmt got_size
    got_fmt=$(sed -n 's/^format: //p' "$T/.out")
    got_size=$(sed -n 's/^size: //p' "$T/.out")
    if [ "$got_fmt" = "$fmt" ] && [ "$got_size" = "$vsize" ]; then
        ok "$name: probed as $fmt, virtual size $vsize"
    else
        not_ok "$name: probed as $fmt, virtual size $vsize" "got format $got_fmt, size $got_size"
    fi
    if [ -z "$sha" ]; then
        skip "$name: bytes" "the manifest has no SHA-256"
    elif [ "$vsize" -gt $((2 * GiB)) ]; then
        skip "$name: bytes" "virtual size $vsize is over 2 GiB"
    else
        local got
        got=$(sha_of "$p")
        if [ "$got" = "$sha" ] && ! _sanitizer_report "$T/.err" && [ ! -s "$T/.err" ]; then
            ok "$name: bytes have the manifest's SHA-256"
        else
            not_ok "$name: bytes have the manifest's SHA-256" "got $got, want $sha" \
                "$(tail -n 5 "$T/.err")"
        fi
    fi
    if qemu-img map --output=json -f "$fmt" "$p" >"$T/.qmap" 2>"$T/.err" &&
       "$BFTEST" map "$p" >"$T/.bmap" 2>"$T/.err" && ! _sanitizer_report "$T/.err" &&
       python3 "$VDISK_TOP/tests/mapcmp.py" --size "$vsize" "$T/.qmap" "$T/.bmap" >"$T/.cmp" 2>&1; then
        ok "$name: map agrees with qemu-img map"
    else
        not_ok "$name: map agrees with qemu-img map" "$(tail -n 5 "$T/.err")" "$(head -n 5 "$T/.cmp" 2>/dev/null)"
    fi
}

# Any other row: refused naming its format, or read correctly; never raw.
check_other() {
    local name=$1 p=$2 fmt=$3 vsize=$4 sha=$5 creator=$6
    local rc=0
    "$BFTEST" info "$p" >"$T/.out" 2>"$T/.err" || rc=$?
    if _sanitizer_report "$T/.err"; then
        not_ok "$name: no sanitizer report" "$(tail -n 20 "$T/.err")"
        return
    fi
    if [ $rc -eq 1 ]; then
        if grep -qE -- "$(fmt_re "$fmt")" "$T/.err"; then
            ok "$name: refused, naming the $fmt format"
        else
            not_ok "$name: refused, naming the $fmt format" "$(cat "$T/.err")"
        fi
        return
    fi
    if [ $rc -ne 0 ]; then
        not_ok "$name: opens or is refused cleanly" "exit status $rc" "$(tail -n 5 "$T/.err")"
        return
    fi
    local got_fmt got_size
    got_fmt=$(sed -n 's/^format: //p' "$T/.out")
    got_size=$(sed -n 's/^size: //p' "$T/.out")
    if [ "$got_fmt" = raw ]; then
        if [[ $creator == *"disk_type=2(fixed)"* ]]; then
            # qemu's probe calls a fixed VHD raw too (its footer is at the
            # end, not the start): the disk is the file minus that footer.
            if [ -n "$vsize" ] && [ "$got_size" -eq $((vsize + 512)) ] &&
               [ "$(sha_of "$p" "$vsize")" = "$sha" ]; then
                ok "$name: fixed VHD probed as raw, as qemu does; its first $vsize bytes are the disk"
            else
                not_ok "$name: fixed VHD probed as raw, as qemu does; its first $vsize bytes are the disk" \
                    "raw size $got_size"
            fi
        else
            not_ok "$name: a $fmt image is not shown as a raw disk" "bftest opened it as raw, size $got_size"
        fi
        return
    fi
    # A driver for this format exists: it must read what qemu reads.
    if [ -n "$vsize" ] && [ "$got_size" != "$vsize" ]; then
        not_ok "$name: opened as $got_fmt with the right size" "size $got_size, want $vsize"
    elif [ -z "$sha" ] || [ -z "$vsize" ] || [ "$vsize" -gt $((2 * GiB)) ]; then
        ok "$name: opened as $got_fmt (no checksum to compare: size ${vsize:-unknown})"
    elif [ "$(sha_of "$p")" = "$sha" ] && ! _sanitizer_report "$T/.err"; then
        ok "$name: opened as $got_fmt, bytes have the manifest's SHA-256"
    else
        not_ok "$name: opened as $got_fmt, bytes have the manifest's SHA-256" "$(tail -n 5 "$T/.err")"
    fi
}

n=0
# Empty fields (a missing size) must survive the split: tabs are whitespace
# to `read`, so translate them to the unit separator first.
while IFS=$'\x1f' read -r -u 3 image stored fmt vsize sha _ptable _parts qemu creator; do
    [ "$image" = image ] && continue
    n=$((n + 1))
    p=$T/img-$n
    if ! prep "$stored" "$p" 2>"$T/.err"; then
        not_ok "$image: decompress" "$(cat "$T/.err")"
        continue
    fi
    case $image in
    binwalk/qcow.bin)
        # A qcow2 header cut to 512 bytes: its refcount and L1 tables lie
        # past the end of the file.  qemu reads the disk as zeros; our rule
        # is that metadata past EOF is an error.
        check_fails "$image: truncated qcow2 refused" "past the end of the file" "$BFTEST" info "$p"
        check_fails "$image: truncated qcow2 refused with -f qcow2" "past the end of the file" \
            "$BFTEST" -f qcow2 cat "$p" "$T/out"
        ;;
    qemu-iotests/afl5.img | qemu-iotests/afl9.vmdk)
        # Fuzzed VHD (afl5) and VMDK (afl9): their drivers must refuse them
        # (any message), as qemu does.
        check_fails "$image: fuzzed image refused with a message" "." "$BFTEST" cat "$p" "$T/out"
        ;;
    *)
        if [ "$fmt" = qcow2 ] || [ "$fmt" = raw ]; then
            check_readable "$image" "$p" "$fmt" "$vsize" "$sha"
        else
            [ "$fmt" = "?" ] && case $creator in
                VHD*) fmt=vpc ;;
                VMDK*) fmt=vmdk ;;
                VHDX*) fmt=vhdx ;;
            esac
            check_other "$image" "$p" "$fmt" "$vsize" "$sha" "$creator"
        fi
        ;;
    esac
    rm -f "$p" "$T/out"
done 3< <(tr '\t' '\037' <"$R/manifest.tsv")

done_testing
