#!/usr/bin/env bash
# test-vmdk-bad.sh — damaged and hostile vmdk images must be refused with a
# message (exit status 1), never read as something else, never crash, never
# trip the sanitizers: grain directories and tables past the end, grain
# sizes of 0 or 2^40 sectors, grain-table sizes, absurd capacities and
# descriptor sizes, truncated headers and streams, compressed grains whose
# stored length overruns the file or the bound, corrupt zlib data, missing
# extent files, extent sizes that do not add up, unknown and raw-device
# extent and create types, malformed extent lines, too many extents,
# missing, unnamed and looping parents, seSparse headers qemu also refuses.
#
# The images come from tests/mkvmdk.py ("bad" set): well-formed images with
# one field poked, or descriptors with one line wrong; bad.tsv says for each
# whether opening or reading must fail and what the message must say.
. "$(dirname "$0")/lib.sh"
require python3

D=$T/b
if ! python3 "$VDISK_TOP/tests/mkvmdk.py" "$D" bad 2>"$T/.mkerr"; then
    not_ok "mkvmdk.py builds the bad images" "$(tail -n 5 "$T/.mkerr")"
    done_testing
fi

while IFS=$'\t' read -r img cmd re; do
    if [ "$cmd" = open ]; then
        check_fails "$img: open fails with a message" "$re" "$BFTEST" info "$D/$img"
    else
        check_fails "$img: reading fails with a message" "$re" "$BFTEST" cat "$D/$img" "$T/out"
        check_fails "$img: reading from 4 threads fails with a message" "$re" \
            "$BFTEST" --threads 4 --chunk 0 cat "$D/$img" "$T/out"
    fi
done <"$D/bad.tsv"

done_testing
