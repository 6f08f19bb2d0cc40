#!/usr/bin/env bash
# test-vmdk-real.sh — real vmdk images from public test suites
# ($SHARED/realimages, see its README.md): every manifest row whose format is
# vmdk (or whose file is a .vmdk) must read whole with the SHA-256 qemu gives
# (manifest column raw_sha256_by_qemu) and map as qemu maps it; rows qemu
# cannot read (the fuzzed afl9.vmdk) must be refused with a message.
#
# iotest-version3.vmdk (qemu's sample of a VMware stream-optimized version 3
# file, 16 GiB virtual) has no SHA-256 in the manifest; the value below was
# computed with `qemu-img convert -O raw` (qemu-img 7.2) and sha256.  Its
# 16 GiB are hashed from a pipe, never written to disk.
. "$(dirname "$0")/lib.sh"
require python3 qemu-img bzip2 gzip

R=$SHARED/realimages
if [ ! -f "$R/manifest.tsv" ]; then
    skip "real vmdk images" "$R is absent"
    done_testing
fi

declare -A KNOWN_SHA=(
    [qemu-iotests/iotest-version3.vmdk]=0859bb3397bc1d30fa979c80a289ce98bfd6c1141a64594d6f3cc8cd68218faf
)

# sha_of_cat IMAGE: SHA-256 of `bftest cat IMAGE`, streamed; "" on failure
# (stderr in $T/.err).
sha_of_cat() {
    "$BFTEST" --chunk 4194304 cat "$1" 2>"$T/.err" | python3 -c '
import hashlib, sys
h = hashlib.sha256()
f = sys.stdin.buffer
while True:
    b = f.read(1 << 22)
    if not b:
        break
    h.update(b)
print(h.hexdigest())' >"$T/.sha"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] || _sanitizer_report "$T/.err"; then
        echo ""
    else
        cat "$T/.sha"
    fi
}

n=0
while IFS=$'\t' read -r image stored fmt vsize sha ptable parts qemu creator; do
    [ "$image" = image ] && continue
    [[ $fmt == vmdk || $image == *.vmdk ]] || continue
    n=$((n + 1))
    local_img=$T/$(basename "$image")
    case $stored in
        *.bz2) bzip2 -dc "$R/$stored" >"$local_img" ;;
        *.gz)  gzip -dc "$R/$stored" >"$local_img" ;;
        *)     cp "$R/$stored" "$local_img" ;;
    esac
    if [ "$qemu" = qemu-fails ]; then
        check_fails "$image: refused with a message (qemu cannot read it either)" "." \
            "$BFTEST" cat "$local_img" "$T/out"
        rm -f "$T/out" "$local_img"
        continue
    fi
    want=$sha
    [ "$want" = - ] && want=${KNOWN_SHA[$image]:-}
    if [ -z "$want" ]; then
        not_ok "$image: an expected SHA-256 is known" "add it to KNOWN_SHA"
        continue
    fi
    got=$(sha_of_cat "$local_img")
    if [ "$got" = "$want" ]; then
        ok "$image: whole-disk SHA-256 equals qemu's ($vsize bytes)"
    else
        not_ok "$image: whole-disk SHA-256 equals qemu's" "want $want" "got  ${got:-(bftest failed)}" \
            "$(tail -n 5 "$T/.err")"
    fi
    if qemu-img map --output=json "$local_img" >"$T/q.json" 2>/dev/null; then
        bf_map_matches "$image: map equals qemu's" "$T/q.json" "$local_img"
    fi
    rm -f "$local_img"
done < <(awk -F'\t' 'BEGIN { OFS = "\t" }   # read would merge empty fields: mark them
                    { for (i = 1; i <= 9; i++) if ($i == "") $i = "-"; print }' "$R/manifest.tsv")

[ $n -gt 0 ] && ok "the manifest lists $n vmdk images" || not_ok "the manifest lists vmdk images"
done_testing
