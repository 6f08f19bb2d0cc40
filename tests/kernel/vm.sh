#!/usr/bin/env bash
# vm.sh — run a test scenario inside a freshly booted Linux VM and print its
# TAP lines.  For tests that need a real kernel (the nbd driver, mounting file
# systems): the machine's own kernel may lack the modules and KVM may be
# missing, so this boots Debian's linux-image-amd64 kernel under
# `qemu-system-x86_64 -accel tcg` with an initramfs built here.
#
# Usage:
#   tests/kernel/vm.sh [--timeout SECS] [--mem MB] [--share DIR] [--load MODULE]...
#                      [--env NAME=VALUE]... [--bin PATH]... [--console FILE]
#                      SCENARIO_SCRIPT [FILE...]
#
#   --timeout SECS  whole run, boot included (default 120).  On expiry the qemu
#                   process is killed (by PID) and "not ok - VM timed out" printed.
#   --mem MB        guest memory (default 512).  FILEs are held in RAM.
#   --share DIR     host directory mounted read-write at /share in the VM (9p):
#                   the way to hand results (a written image) back to the host.
#   --load MODULE   also modprobe MODULE at boot (e.g. nbd); repeatable.
#   --env N=V       export N=V to the scenario; repeatable.  ASAN_OPTIONS,
#                   UBSAN_OPTIONS and LSAN_OPTIONS are passed on when set.
#   --bin PATH      also copy this host executable (and its libraries) to
#                   /usr/local/bin in the VM; repeatable.
#   --console FILE  keep the raw serial console log in FILE.
#   Environment: VDISK_BUILD (binaries to test, default build/), VDISK_VM_KERNEL
#   (kernel version to boot; default the newest in /boot whose modules have nbd).
#
# Writing a scenario: a busybox-ash script (no bash in the VM) that starts with
#     . /vmlib.sh
# then uses ok / not_ok / skip / diag / check / check_fails / same_file and ends
# with done_testing, like tests/lib.sh.  The FILEs are in /data (its working
# directory), vdisk-nbd and vdisk-mount are on PATH, $T is a temp dir, modules
# load with modprobe (nbd, ext4, vfat, fat, nls_*, loop, fuse, 9p; ext4, vfat,
# nls_* and loop are loaded already), /dev is devtmpfs (no udev), lo is up.  Example:
#     . /vmlib.sh
#     check "nbd module loads" modprobe nbd nbds_max=16 max_part=16
#     check "ext4 mounts" mount -o ro /dev/loop0p1 /mnt
#     done_testing
# From a tests/test-*.sh, use tests/kernel/hostlib.sh's vm_tap to fold the
# scenario's results into the script's own TAP numbering.
#
# Kernel facts for nbd scenarios (Debian 6.1): `modprobe nbd` makes nbd0..15
# (nbds_max=16); max_part is rounded up to 2^n-1, so max_part=16 (also the
# default) gives 31 and minors 32 apart (nbd1 is 43:32).  The "nbd" genetlink
# family has no module alias: nothing loads nbd.ko on demand, modprobe it.
# There is no udev: device nodes come from devtmpfs, and exist when the call
# that created the device returns (checked here for loop -P partitions).  The
# nbd driver only flags a partition rescan when the size is set; the scan
# itself happens at the next open of /dev/nbdX (udev's, elsewhere): attached
# with the ioctls, /dev/nbd0p1 did not appear until something opened nbd0,
# and then at once.  So `-c` must open the device itself before returning.
#
# Output: the scenario's stdout (its TAP lines) as is; its stderr, and the tail
# of dmesg when it failed, as "# " diagnostics; a "# vm.sh: ..." timing line.
# Exit status: 0 all passed; 1 a "not ok", no plan line, a non-zero exit of the
# scenario or a VM that died; 2 bad usage or set-up; 3 timed out.
#
# How: the initramfs is three cpio archives, concatenated: the run's (the
# scenario, the FILEs, settings and the build's binaries; uncompressed, made
# each run), the shared libraries ldd lists for the binaries, and the base
# (busybox-static, tests/kernel/init as /init, vmlib.sh, the needed kernel
# modules with a modules.dep made by depmod -b; gzip'ed).  The last two are
# cached in $VDISK_BUILD/vm-cache/, keyed by a hash of their inputs.
# The kernel boots as an uncompressed vmlinux (PVH entry, extracted once into
# the cache), which saves the ~5 s that decompressing vmlinuz takes under TCG.
# The VM's /init prefixes the scenario's output (VMTAP:, VMERR:, VMLOG:,
# VMEXIT:) on the serial console, which is how it is told from kernel messages.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${VDISK_BUILD:-$top/build}
build=$(cd "$build" 2>/dev/null && pwd) || { echo "vm.sh: no build directory ${VDISK_BUILD:-$top/build}" >&2; exit 2; }

timeout=120 mem=512 share="" console_copy=""
loads=() envs=() bins=()
usage() { sed -n '8,11p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) timeout=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --share) share=${2:?}; shift 2 ;;
        --load) loads+=("${2:?}"); shift 2 ;;
        --env) envs+=("${2:?}"); shift 2 ;;
        --bin) bins+=("${2:?}"); shift 2 ;;
        --console) console_copy=${2:?}; shift 2 ;;
        --) shift; break ;;
        -*) echo "vm.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
scenario=$1; shift
files=("$@")
die() { echo "vm.sh: $*" >&2; exit 2; }
[[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || die "--timeout wants whole seconds"
[[ $mem =~ ^[0-9]+$ ]] || die "--mem wants megabytes"
[ -f "$scenario" ] || die "no scenario script $scenario"
for f in "${files[@]}"; do [ -e "$f" ] || die "no file $f"; done
[ -z "$share" ] || [ -d "$share" ] || die "--share $share is not a directory"
for e in "${envs[@]}"; do [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, not $e"; done
for t in qemu-system-x86_64 cpio depmod gzip ldd sha256sum; do
    command -v "$t" >/dev/null || die "needs $t (run tests/deps.sh)"
done
busybox=/bin/busybox
if [ ! -x $busybox ] || ldd $busybox >/dev/null 2>&1; then
    die "needs a static $busybox (package busybox-static; run tests/deps.sh)"
fi

# ---- the kernel ----
kver=${VDISK_VM_KERNEL:-}
if [ -z "$kver" ]; then
    for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        v=${k#/boot/vmlinuz-}
        if [ -f "/lib/modules/$v/modules.dep" ] && grep -qE '/nbd\.ko[^:]*:' "/lib/modules/$v/modules.dep"; then
            kver=$v; break
        fi
    done
fi
[ -n "$kver" ] || die "no kernel in /boot with an nbd module (package linux-image-amd64; run tests/deps.sh)"
vmlinuz=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$vmlinuz" ] && [ -f "$moddir/modules.dep" ] ||
    die "kernel $kver: no $vmlinuz or $moddir/modules.dep"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-vm.XXXXXX")
qpid=""
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -KILL "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cache=$build/vm-cache
mkdir -p "$cache" || die "cannot create $cache"
now_us() { local t=${EPOCHREALTIME//[!0-9]/}; echo "$t"; }
secs_since() { local d=$(( $(now_us) - $1 )); printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000)); }
t_start=$(now_us)

# ---- the kernel image qemu boots: vmlinux extracted from vmlinuz when the
# kernel has a PVH entry point (qemu boots that ELF directly, no decompressor) ----
kernel=$vmlinuz
if grep -qx 'CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null && command -v python3 >/dev/null; then
    vkey=$(stat -c '%s-%Y' "$vmlinuz")
    vmlinux=$cache/vmlinux-$kver-$vkey
    if [ ! -s "$vmlinux" ]; then
        rm -f "$cache"/vmlinux-"$kver"-*
        python3 - "$vmlinuz" "$vmlinux.$$" <<'EOF' 2>/dev/null && mv -f "$vmlinux.$$" "$vmlinux"
import lzma, sys, zlib
data = open(sys.argv[1], 'rb').read()
def candidates():
    for magic, dec in ((b'\xfd7zXZ\x00', lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
                       (b'\x1f\x8b\x08', lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))):
        i = data.find(magic)
        while i >= 0:
            yield i, dec()
            i = data.find(magic, i + 1)
for i, d in candidates():
    try:
        out = d.decompress(data[i:])
    except Exception:
        continue
    if out[:4] == b'\x7fELF':
        open(sys.argv[2], 'wb').write(out)
        sys.exit(0)
sys.exit(1)
EOF
        rm -f "$vmlinux.$$"
    fi
    [ -s "$vmlinux" ] && kernel=$vmlinux
fi

# ---- the base initramfs (cached) ----
# Modules: these and what they depend on, resolved with the VM kernel's
# modules.dep (never the running kernel's).
base_modules="nbd ext4 vfat fat nls_ascii nls_cp437 nls_iso8859-1 nls_utf8 loop crc32c_generic fuse 9p 9pnet_virtio virtio_pci"
mods=$(awk -v want="$base_modules" '
    function norm(s) { gsub("-", "_", s); return s }
    function base(p) { sub(".*/", "", p); sub("\\.ko.*$", "", p); return norm(p) }
    function add(p,    k, n, d) {
        if (p in seen) return
        seen[p] = 1; print p
        n = split(deps[p], d, " ")
        for (k = 1; k <= n; k++) add(d[k])
    }
    FILENAME ~ /modules\.builtin$/ { builtin[base($1)] = 1; next }
    { p = $1; sub(":$", "", p); $1 = ""; deps[p] = $0; byname[base(p)] = p }
    END {
        n = split(want, w, " ")
        for (i = 1; i <= n; i++) {
            m = norm(w[i])
            if (m in byname) add(byname[m])
            else if (!(m in builtin)) print "MISSING " w[i]
        }
    }' "$moddir/modules.builtin" "$moddir/modules.dep")
if grep -q '^MISSING' <<<"$mods"; then
    die "kernel $kver lacks modules: $(grep '^MISSING' <<<"$mods" | cut -d' ' -f2 | tr '\n' ' ')"
fi

# Programs, and the shared libraries they load (ldd; plus libgcc_s, which
# glibc dlopens for pthread_cancel/pthread_exit and ldd cannot see).
progs=()
for p in vdisk-nbd vdisk-mount; do
    [ -x "$build/$p" ] || die "$build/$p is not built"
    progs+=("$build/$p=usr/bin/$p")
done
for b in "${bins[@]}"; do
    p=$(command -v "$b") || die "--bin $b: not found"
    progs+=("$p=usr/local/bin/$(basename "$p")")
done
libs=$(for pr in "${progs[@]}"; do
           ldd "${pr%%=*}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
       done
       gcc_s=/lib/x86_64-linux-gnu/libgcc_s.so.1
       if [ -e $gcc_s ]; then echo $gcc_s; fi)
libs=$(sort -u <<<"$libs")

# cached_archive NAME EXT MANIFEST: a cpio (EXT cpio) or gzip'ed cpio (EXT
# cpio.gz) of the files MANIFEST lists ("host-path=path-in-initramfs", one a
# line), cached in $cache under a hash of the list, the files' contents and
# this script.  Sets $archive and $archive_how.  The base also gets the
# modules.dep that depmod -b makes.
cached_archive() {
    local name=$1 ext=$2 manifest=$3 key st line src dst t0
    key=$( { cat "$manifest"; cut -d= -f1 "$manifest" | xargs -r sha256sum; sha256sum "$0"; } |
           sha256sum | cut -c1-16)
    archive=$cache/$name-$key.$ext
    archive_how="cached"
    [ -s "$archive" ] && return 0
    t0=$(now_us)
    st=$tmp/$name
    mkdir -p "$st"
    while IFS= read -r line; do
        src=${line%%=*} dst=$st/${line#*=}
        mkdir -p "$(dirname "$dst")"
        case $src in
            *.ko.xz) xz -dc "$src" >"${dst%.xz}" ;;
            *.ko.zst) zstd -qdc "$src" >"${dst%.zst}" ;;
            *.ko.gz) gzip -dc "$src" >"${dst%.gz}" ;;
            *) cp -L "$src" "$dst" ;;
        esac || die "cannot copy $src"
    done <"$manifest"
    if [ "$name" = base ]; then
        mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,proc,sys,dev,tmp,run,mnt,data,share,etc,root}
        chmod 755 "$st/init"
        depmod -b "$st" "$kver" 2>"$tmp/depmod.err" || die "depmod -b failed: $(cat "$tmp/depmod.err")"
    fi
    (cd "$st" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet |
        if [ "$ext" = cpio.gz ]; then gzip -6; else cat; fi) >"$archive.$$" ||
        die "cannot build the initramfs"
    mv -f "$archive.$$" "$archive"
    archive_how="built in $(secs_since "$t0") s"
    # Keep the cache small: the 2 newest of each kind.
    ls -t "$cache/$name"-* 2>/dev/null | tail -n +3 | xargs -r rm -f
}

# The base: busybox, /init, vmlib.sh, the modules.
{
    echo "$busybox=bin/busybox"
    echo "$here/init=init"
    echo "$here/vmlib.sh=vmlib.sh"
    for m in $mods; do echo "$moddir/$m=lib/modules/$kver/$m"; done
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ -f "$moddir/$f" ] && echo "$moddir/$f=lib/modules/$kver/$f"
    done
} >"$tmp/base.list"
cached_archive base cpio.gz "$tmp/base.list"
base=$archive base_how=$archive_how
# The libraries (at the paths ldd names, the loader included); the programs
# themselves change at every build, so they go in the run's archive.  Not
# compressed: for the ASan build's 50 MB, gunzip under TCG costs 1-2 s more
# than the bigger initrd does.
for l in $libs; do echo "$l=${l#/}"; done >"$tmp/libs.list"
cached_archive libs cpio "$tmp/libs.list"
libsarch=$archive libs_how=$archive_how

# ---- this run's archive: scenario, FILEs, settings ----
rs=$tmp/run
mkdir -p "$rs/data" "$rs/etc"
cp "$scenario" "$rs/scenario.sh"
for pr in "${progs[@]}"; do
    mkdir -p "$rs/$(dirname "${pr#*=}")"
    ln -s "${pr%%=*}" "$rs/${pr#*=}"
done
for f in "${files[@]}"; do
    n=$(basename "$f")
    [ -e "$rs/data/$n" ] && die "two FILEs named $n"
    ln -s "$(cd "$(dirname "$f")" && pwd)/$n" "$rs/data/$n"
done
inner=$(( timeout - (timeout / 4 > 10 ? timeout / 4 : 10) ))
[ $inner -ge 1 ] || inner=1
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
    echo "VM_MODULES=$(q "crc32c_generic ext4 vfat nls_ascii nls_cp437 nls_iso8859-1 nls_utf8 loop${share:+ virtio_pci 9pnet_virtio 9p} ${loads[*]}")"
    echo "VM_SHARE=$(q "$share")"
    echo "VM_TIMEOUT=$inner"
    echo "VMLIB=/vmlib.sh; export VMLIB"
    for v in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
        # the host's log_path means nothing in the VM: reports go to stderr there
        val=$(printf '%s' "${!v:-}" | tr ':' '\n' | grep -v '^log_path=' | paste -sd: -)
        [ -n "$val" ] && echo "$v=$(q "$val"); export $v"
    done
    for e in "${envs[@]}"; do echo "${e%%=*}=$(q "${e#*=}"); export ${e%%=*}"; done
} >"$rs/etc/vm-env"
initrd=$tmp/initrd
{ (cd "$rs" && find -L . | LC_ALL=C sort | cpio -o -H newc -L -R 0:0 --quiet) && cat "$libsarch" "$base"; } >"$initrd" ||
    die "cannot build the run's initramfs"

# ---- boot ----
qemu=(qemu-system-x86_64 -accel tcg -M pc -m "$mem" -smp 1 -nographic -vga none -nic none
      -no-reboot -kernel "$kernel" -initrd "$initrd"
      -append "console=ttyS0 quiet panic=-1 rdinit=/init")
[ -n "$share" ] && qemu+=(-virtfs "local,path=$(cd "$share" && pwd),mount_tag=share,security_model=none,id=share")
console=$tmp/console.log
t_boot=$(now_us)
"${qemu[@]}" </dev/null >"$console" 2>"$tmp/qemu.err" &
qpid=$!
deadline=$(( t_boot + timeout * 1000000 ))
timed_out=0
while kill -0 "$qpid" 2>/dev/null; do
    if [ "$(now_us)" -ge "$deadline" ]; then
        timed_out=1
        kill -TERM "$qpid" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$qpid" 2>/dev/null
        break
    fi
    sleep 0.1
done
qrc=0
wait "$qpid" 2>/dev/null || qrc=$?
killed_pid=$qpid
qpid=""
wall=$(secs_since "$t_boot")
[ -n "$console_copy" ] && cp "$console" "$console_copy"

# ---- results ----
tr -d '\r' <"$console" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >"$tmp/console.txt"
sed -n 's/^.*VMTAP://p' "$tmp/console.txt" >"$tmp/tap"
cat "$tmp/tap"
sed -n 's/^.*VMERR:/# [vm stderr] /p; s/^.*VMLOG:/# [vm dmesg] /p' "$tmp/console.txt"
vmexit=$(sed -n 's/^.*VMEXIT:\([0-9]*\).*/\1/p' "$tmp/console.txt" | tail -n 1)
started=$(sed -n 's/^.*VMSTART:\([0-9.]*\).*/\1/p' "$tmp/console.txt" | tail -n 1)
ended=$(sed -n 's/^.*VMEND:\([0-9.]*\).*/\1/p' "$tmp/console.txt" | tail -n 1)
n=$(grep -cE '^(not )?ok [0-9]+' "$tmp/tap")
console_tail() {
    grep -vE 'VM(TAP|ERR|LOG|EXIT|START|END):' "$tmp/console.txt" | grep -v '^[[:space:]]*$' | tail -n 25 | sed 's/^/#   console: /'
    [ -s "$tmp/qemu.err" ] && tail -n 5 "$tmp/qemu.err" | sed 's/^/#   qemu: /'
}
rc=0
if [ $timed_out -eq 1 ]; then
    echo "not ok $((n + 1)) - VM timed out after ${timeout}s (qemu pid $killed_pid killed)"
    console_tail
    rc=3
elif [ -z "$vmexit" ]; then
    echo "not ok $((n + 1)) - the VM ended without finishing the scenario (qemu exit status $qrc)"
    console_tail
    rc=1
elif [ "$vmexit" = 124 ]; then
    echo "not ok $((n + 1)) - the scenario did not finish within its ${inner}s in the VM"
    rc=3
elif ! grep -qE '^1\.\.[0-9]+' "$tmp/tap"; then
    echo "not ok $((n + 1)) - the scenario printed no plan line (exit status $vmexit)"
    rc=1
elif grep -qE '^not ok [0-9]+' "$tmp/tap"; then
    rc=1
elif [ "$vmexit" != 0 ]; then
    echo "not ok $((n + 1)) - the scenario exited with status $vmexit"
    rc=1
fi
kib() { echo "$(( $(stat -c %s "$1") / 1024 ))"; }
echo "# vm.sh: kernel $kver ($(basename "$kernel")), initramfs $(kib "$base") KiB base ($base_how) + $(kib "$libsarch") KiB libraries ($libs_how) + $(( $(kib "$initrd") - $(kib "$base") - $(kib "$libsarch") )) KiB run; qemu pid $killed_pid; boot+run ${wall} s (guest uptime at the scenario's start ${started:-?} s, end ${ended:-?} s); total $(secs_since "$t_start") s"
exit $rc
