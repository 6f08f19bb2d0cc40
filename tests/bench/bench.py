#!/usr/bin/python3
"""bench.py BUILD_DIR CACHE_DIR TMP_DIR OUT_DIR — the measurements of `make bench`.

Runs vdisk-nbd / vdisk-mount side by side with the peers installed here
(qemu-nbd, nbdkit, qcowmount, vmdkmount, xmount, a kernel loop mount,
guestmount), alternating the tools sample by sample (the order rotates each
repetition), and writes results.json / results.tsv / ratios.png / table.txt
to OUT_DIR (rendering is in report.py).  tests/bench/run makes the images and
calls this; see tests/bench/README.md for what each row measures.

Environment: BENCH_REPS (default 3, never fewer), BENCH_FIO_SECS (default 10:
the measured part of each fio run, after a 1 s ramp), BENCH_ONLY (a regular
expression on group names: nbd-seq, nbd-randread, nbd-randwrite, rss,
fuse-seq, fs-view, mount-ready), BENCH_PERF=1 (also profile ours with perf
where it misses a target).

Everything it starts it stops by PID: servers are its own children; FUSE
daemons that detach are re-parented to it (it is a child subreaper), so it
knows their PIDs too, unmounts them, and reaps them.  Thread model: none;
one process, sequential.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36

BUILD, CACHE, TMP, OUT = (os.path.abspath(a) for a in sys.argv[1:5])
REPS = max(3, int(os.environ.get("BENCH_REPS", "3")))
FIO_SECS = max(2, int(os.environ.get("BENCH_FIO_SECS", "10")))
ONLY = re.compile(os.environ.get("BENCH_ONLY", "."))
PERF = os.environ.get("BENCH_PERF", "") not in ("", "0")

BIN = os.path.join(TMP, "bin")
VDISK_NBD = os.path.join(BIN, "vdisk-nbd")
VDISK_MOUNT = os.path.join(BIN, "vdisk-mount")
LOGS = os.path.join(TMP, "logs")
MNT = os.path.join(TMP, "mnt")

IMAGES = {  # key: (file, format, label)
    "raw": ("raw.img", "raw", "raw"),
    "qcow2": ("qcow2.qcow2", "qcow2", "qcow2"),
    "zlib": ("zlib.qcow2", "qcow2", "qcow2 zlib"),
    "zstd": ("zstd.qcow2", "qcow2", "qcow2 zstd"),
    "vmdk": ("stream.vmdk", "vmdk", "vmdk streamOpt"),
}


def img(key):
    return os.path.join(CACHE, IMAGES[key][0])


def log(msg=""):
    print(msg, flush=True)


# ---------------------------------------------------------------- processes

SERVERS = {}   # pid -> Popen (servers and other foreground children)
DAEMONS = {}   # mountpoint -> pid of the FUSE daemon serving it (or None: kernel mount)


def cpu_seconds(pid):
    """utime+stime of a live process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def my_children():
    me = os.getpid()
    kids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                for line in f:
                    if line.startswith("PPid:"):
                        if int(line.split()[1]) == me:
                            kids.add(int(d))
                        break
        except OSError:
            pass
    return kids


def reap(pid, timeout):
    """Wait for a re-parented child to exit and reap it; True when gone."""
    end = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            return not os.path.exists("/proc/%d" % pid)
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


def stop_pid(pid, timeout=10):
    """Stop one of our (re-parented) children: it should be exiting; else TERM, KILL."""
    if reap(pid, timeout):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if reap(pid, 5):
            return


def system_busy():
    """CPU-seconds all CPUs have been busy since boot (/proc/stat), whoever ran."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK   # all but idle and iowait


LAST_BUSY = [0.0]   # system-wide busy CPU-seconds during the last run_timed


def others(wall, *ours):
    """Cores used during the last run_timed by everything but the measured
    processes: other users of this machine, kernel threads."""
    if not wall:
        return None
    return round(max(0.0, LAST_BUSY[0] - sum(x or 0 for x in ours)) / wall, 2)


def run_timed(cmd, name, env=None, timeout=None):
    """Run a client command to completion; wall time, its CPU time, exit status.
    Sets LAST_BUSY to the CPU-seconds the whole machine was busy meanwhile."""
    busy0 = system_busy()
    out = open(os.path.join(LOGS, name + ".out"), "wb")
    err = open(os.path.join(LOGS, name + ".err"), "wb")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if deadline and time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.0005)
    wall = time.monotonic() - t0
    LAST_BUSY[0] = system_busy() - busy0
    p.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    err.close()
    return wall, ru.ru_utime + ru.ru_stime, p.returncode


def tail(name, n=6):
    try:
        with open(os.path.join(LOGS, name)) as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
        return " | ".join(lines[-n:])
    except OSError:
        return ""


def first_error(name):
    """The first lines of a log that say what went wrong (not a banner)."""
    try:
        with open(os.path.join(LOGS, name), errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    hits = [ln for ln in lines if re.search(r"error|unable|unsupported|cannot|failed|not ", ln, re.I)]
    return " | ".join((hits or lines)[:3])


def wait_socket(path, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %s" % proc.returncode)
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                s.close()
                return
            except OSError:
                s.close()
        time.sleep(0.01)
    raise RuntimeError("server did not listen on %s within %d s" % (path, timeout))


class Server:
    """An NBD server on a Unix socket in TMP, started and stopped by PID."""

    def __init__(self, tool, image, fmt, writable=False):
        self.sock = os.path.join(TMP, "nbd-%s.sock" % tool)
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        ro = [] if writable else ["-r"]
        if tool == "ours":
            cmd = [VDISK_NBD, "-f", fmt] + ro + ["-k", self.sock, "-e", "8", "-t", image]
        elif tool == "qemu-nbd":
            cmd = ["qemu-nbd", "-f", fmt] + ro + ["-k", self.sock, "-e", "8", "-t", image]
        elif tool == "nbdkit":
            cmd = ["nbdkit", "-f"] + ro + ["-U", self.sock, "file", "file=" + image]
        else:
            raise ValueError(tool)
        self.tool = tool
        self.errlog = "server-%s.err" % tool
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(LOGS, self.errlog), "ab"))
        SERVERS[self.proc.pid] = self.proc
        try:
            wait_socket(self.sock, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError("%s: %s: %s" % (tool, e, tail(self.errlog)))
        self.pid = self.proc.pid
        self.cpu0 = cpu_seconds(self.pid)

    @property
    def uri(self):
        return "nbd+unix:///?socket=" + self.sock

    def cpu(self):
        c = cpu_seconds(self.proc.pid)
        return None if c is None else round(c - self.cpu0, 3)

    def stop(self):
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        SERVERS.pop(p.pid, None)


# -------------------------------------------------------------------- mounts

def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def fuse_mount(cmd, name, env=None, timeout=60):
    """Run a mount command that detaches; return (wall, daemon pid).

    The daemon is re-parented to us (child subreaper): it is the one new child."""
    os.makedirs(MNT, exist_ok=True)
    before = my_children()
    wall, _, rc = run_timed(cmd, name, env=env, timeout=timeout)
    if rc != 0 or not is_mounted(MNT):
        new = my_children() - before - set(SERVERS)
        for pid in new:
            stop_pid(pid, 0.5)
        if is_mounted(MNT):
            subprocess.run(["umount", MNT], stderr=subprocess.DEVNULL)
        raise RuntimeError("exit status %d: %s" % (rc, first_error(name + ".err") or tail(name + ".out", 3)))
    pid = None
    end = time.monotonic() + 2
    while pid is None and time.monotonic() < end:
        new = my_children() - before - set(SERVERS)
        if len(new) == 1:
            pid = new.pop()
        elif len(new) > 1:
            pid = min(new)
        else:
            time.sleep(0.01)
    DAEMONS[MNT] = pid
    return wall, pid


def kernel_mount(image, offset):
    os.makedirs(MNT, exist_ok=True)
    subprocess.run(["mount", "-t", "ext4", "-o", "ro,loop,noload,offset=%d" % offset, image, MNT],
                   check=True)
    DAEMONS[MNT] = None


def unmount(path=MNT, tool=None):
    pid = DAEMONS.get(path)
    cmd = ["guestunmount", path] if tool == "guestmount" else ["umount", path]
    for attempt in range(20):
        if not is_mounted(path):
            break
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode == 0 and not is_mounted(path):
            break
        time.sleep(0.1 * (attempt + 1))
    else:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
    if pid:
        stop_pid(pid)
    DAEMONS.pop(path, None)


def cleanup():
    for path in list(DAEMONS):
        try:
            unmount(path)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for p in list(SERVERS.values()):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # Anything else re-parented to us (a mount helper's child): by PID.
    for pid in my_children():
        stop_pid(pid, 2)


# ------------------------------------------------------------------- helpers

def warm(path):
    """Read a file once so it is in the page cache; return the cached fraction."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    frac = cached_fraction(path)
    RESULTS["env"].setdefault("page_cache_resident", {})[os.path.basename(path)] = frac
    return frac


def cached_fraction(path):
    try:
        r = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES,SIZE", path],
                           capture_output=True, text=True, check=True)
        res, size = (int(x) for x in r.stdout.split()[:2])
        return round(res / size, 3) if size else 1.0
    except (subprocess.CalledProcessError, ValueError, OSError):
        return None


def fio_json(name):
    with open(os.path.join(LOGS, name + ".out")) as f:
        s = f.read()
    return json.loads(s[s.index("{"):])


def fio_cmd(uri, rw, bs):
    return ["fio", "--name=bench", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw,
            "--bs=" + bs, "--iodepth=32", "--numjobs=1", "--time_based",
            "--runtime=%d" % FIO_SECS, "--ramp_time=1", "--norandommap", "--randrepeat=0",
            "--output-format=json"]


def alternate(tools, label):
    """tools: list of (name, fn); fn(rep) -> sample dict with 'value'.  The
    tools take turns; the order rotates each repetition.  A tool whose sample
    raises is marked unavailable and not run again."""
    samples = {name: [] for name, _ in tools}
    errors = {}
    for rep in range(REPS):
        k = rep % len(tools)
        for name, fn in tools[k:] + tools[:k]:
            if name in errors:
                continue
            try:
                s = fn(rep)
            except Exception as e:  # noqa: BLE001 - reported as "not available"
                errors[name] = str(e)[:300]
                log("  %-34s %-12s not available: %s" % (label, name, errors[name]))
                continue
            samples[name].append(s)
            extra = "" if s.get("other_cores") is None else "  [others %.1f cores]" % s["other_cores"]
            log("  %-34s %-12s #%d %s%s" % (label, name, rep + 1, s.get("show", s["value"]), extra))
    return samples, errors


RESULTS = {"env": {}, "rows": [], "notes": []}


def add_row(group, test, unit, higher_better, ours, peer_name, peer, target=None,
            errors=None, note=None, ours_name="ours"):
    errors = errors or {}
    row = {
        "group": group, "test": test, "unit": unit, "higher_is_better": higher_better,
        "ours_name": ours_name, "peer_name": peer_name,
        "ours_samples": ours or [], "peer_samples": peer or [],
        "target": target, "note": note,
        "ours_error": errors.get(ours_name), "peer_error": errors.get(peer_name) if peer_name else None,
    }
    RESULTS["rows"].append(row)
    save()


def save():
    report.finish_rows(RESULTS)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def mbps(nbytes, secs):
    return round(nbytes / secs / 1e6, 1)


# ------------------------------------------------------------------ NBD seq

def nbd_seq():
    log("\n== NBD sequential read: nbdcopy URI null: (1 GiB, Unix socket, -r -e 8 -t)")
    for key in IMAGES:
        path, fmt = img(key), IMAGES[key][1]
        warm(path)
        peers = ["qemu-nbd"] + (["nbdkit"] if key == "raw" else [])

        def sample(tool, key=key, path=path, fmt=fmt):
            def fn(rep):
                srv = Server(tool, path, fmt)
                try:
                    name = "nbdcopy-%s-%s-%d" % (key, tool, rep)
                    wall, ccpu, rc = run_timed(["nbdcopy", srv.uri, "null:"], name, timeout=600)
                    scpu = srv.cpu()
                finally:
                    srv.stop()
                if rc != 0:
                    raise RuntimeError("nbdcopy exit %d: %s" % (rc, tail(name + ".err")))
                v = mbps(GiB, wall)
                return {"value": v, "wall_s": round(wall, 3), "server_cpu_s": scpu,
                        "client_cpu_s": round(ccpu, 3), "other_cores": others(wall, scpu, ccpu),
                        "show": "%7.0f MB/s  (%.2f s; server cpu %.2f s, client cpu %.2f s)"
                                % (v, wall, scpu or 0, ccpu)}
            return fn

        tools = [("ours", sample("ours"))] + [(p, sample(p)) for p in peers]
        s, err = alternate(tools, "seq " + IMAGES[key][2])
        for p in peers:
            tgt = None
            if p == "qemu-nbd":
                tgt = {"kind": "ratio", "value": 1.2 if key in ("raw", "qcow2") else 3.0}
            add_row("nbd-seq", "NBD seq read " + IMAGES[key][2], "MB/s", True,
                    s["ours"], p, s[p], tgt, err)


# ---------------------------------------------------------------- NBD fio

def fio_sample(tool, path, fmt, rw, bs, tag, writable=False):
    def fn(rep):
        srv = Server(tool, path, fmt, writable=writable)
        try:
            name = "fio-%s-%s-%d" % (tag, tool, rep)
            wall, ccpu, rc = run_timed(fio_cmd(srv.uri, rw, bs), name, timeout=FIO_SECS + 60)
            scpu = srv.cpu()
            hwm = status_kib(srv.pid, "VmHWM")
            oth = others(wall, scpu, ccpu)
        finally:
            srv.stop()
        if rc != 0:
            raise RuntimeError("fio exit %d: %s" % (rc, tail(name + ".err") or tail(name + ".out")))
        j = fio_json(name)["jobs"][0]
        d = j["write" if "write" in rw else "read"]
        if d.get("io_bytes", 0) == 0 or j.get("error"):
            raise RuntimeError("fio did no I/O: error %s" % j.get("error"))
        iops, bw = d["iops"], d["bw_bytes"] / 1e6
        # Server CPU per request: the CPU covers the 1 s ramp too, counted at the measured rate.
        us_io = None if not (scpu and iops) else round(scpu * 1e6 / (iops * (FIO_SECS + 1)), 2)
        return {"iops": round(iops), "mb_s": round(bw, 1), "wall_s": round(wall, 2),
                "server_us_per_io": us_io,
                "server_cpu_s": scpu, "client_cpu_s": round(ccpu, 2), "other_cores": oth,
                "vmhwm_mib": None if hwm is None else round(hwm / 1024, 1),
                "lat_us_mean": round(d["clat_ns"]["mean"] / 1000, 1)}
    return fn


def nbd_randread():
    log("\n== NBD 4 KiB random read, iodepth 32, %d s (fio --ioengine=nbd; 1 connection)" % FIO_SECS)
    for key in ("qcow2", "raw"):
        path, fmt = img(key), IMAGES[key][1]
        warm(path)
        peers = ["qemu-nbd"] + (["nbdkit"] if key == "raw" else [])
        tools = []
        for t in ["ours"] + peers:
            f = fio_sample(t, path, fmt, "randread", "4k", "rr-" + key)

            def g(rep, f=f):
                s = f(rep)
                s["value"] = s["iops"]
                s["show"] = "%7d IOPS  (server cpu %.1f s, fio cpu %.1f s, mean lat %.0f us)" % (
                    s["iops"], s["server_cpu_s"] or 0, s["client_cpu_s"], s["lat_us_mean"])
                return s
            tools.append((t, g))
        s, err = alternate(tools, "randread 4K " + IMAGES[key][2])
        for p in peers:
            tgt = {"kind": "ratio", "value": 2.0} if (key == "qcow2" and p == "qemu-nbd") else None
            add_row("nbd-randread", "NBD 4K randread " + IMAGES[key][2], "IOPS", True,
                    s["ours"], p, s[p], tgt, err)


def nbd_randwrite():
    log("\n== NBD 64 KiB random write, iodepth 32, %d s (fio --ioengine=nbd), on copies" % FIO_SECS)
    for key in ("qcow2", "raw"):
        fmt = IMAGES[key][1]
        copies = {}
        for t in ("ours", "qemu-nbd"):
            copies[t] = os.path.join(TMP, "w-%s-%s" % (t, IMAGES[key][0]))
            shutil.copyfile(img(key), copies[t])
        tools = []
        for t in ("ours", "qemu-nbd"):
            f = fio_sample(t, copies[t], fmt, "randwrite", "64k", "rw-" + key, writable=True)

            def g(rep, f=f):
                s = f(rep)
                s["value"] = s["mb_s"]
                s["show"] = "%7.0f MB/s  (%d IOPS; server cpu %.1f s, fio cpu %.1f s)" % (
                    s["mb_s"], s["iops"], s["server_cpu_s"] or 0, s["client_cpu_s"])
                return s
            tools.append((t, g))
        s, err = alternate(tools, "randwrite 64K " + IMAGES[key][2])
        for c in copies.values():
            os.unlink(c)
        add_row("nbd-randwrite", "NBD 64K randwrite " + IMAGES[key][2], "MB/s", True,
                s["ours"], "qemu-nbd", s["qemu-nbd"], None, err)


def rss():
    log("\n== Peak RSS (VmHWM) of the server, fio 4 KiB random reads over a 1 TiB qcow2, %d s" % FIO_SECS)
    path = os.path.join(CACHE, "big1t.qcow2")
    warm(path)
    tools = []
    for t in ("ours", "qemu-nbd"):
        f = fio_sample(t, path, "qcow2", "randread", "4k", "rss")

        def g(rep, f=f):
            s = f(rep)
            s["value"] = s["vmhwm_mib"]
            s["show"] = "%7.1f MiB  (%d IOPS)" % (s["vmhwm_mib"], s["iops"])
            return s
        tools.append((t, g))
    s, err = alternate(tools, "VmHWM 1 TiB qcow2")
    add_row("rss", "Server peak RSS, 1 TiB qcow2", "MiB", False, s["ours"], "qemu-nbd",
            s["qemu-nbd"], {"kind": "abs", "value": 64, "op": "<"}, err)
    # The IOPS of the same runs, for information.
    add_row("rss", "NBD 4K randread 1 TiB qcow2", "IOPS", True,
            [dict(x, value=x["iops"]) for x in s["ours"]], "qemu-nbd",
            [dict(x, value=x["iops"]) for x in s["qemu-nbd"]], None, err)


# ---------------------------------------------------------------- FUSE

def daemon_cpu_during(pid, c0):
    c1 = cpu_seconds(pid) if pid else None
    return None if (c0 is None or c1 is None) else round(c1 - c0, 3)


def read_file_sample(path_in_mnt, name, daemon_pid):
    c0 = cpu_seconds(daemon_pid) if daemon_pid else None
    wall, ccpu, rc = run_timed(["dd", "if=" + path_in_mnt, "of=/dev/null", "bs=1M"], name,
                               timeout=600)
    dcpu = daemon_cpu_during(daemon_pid, c0)
    if rc != 0:
        raise RuntimeError("dd exit %d: %s" % (rc, tail(name + ".err")))
    size = os.stat(path_in_mnt).st_size
    v = mbps(size, wall)
    return {"value": v, "wall_s": round(wall, 3), "client_cpu_s": round(ccpu, 3),
            "daemon_cpu_s": dcpu, "other_cores": others(wall, ccpu, dcpu),
            "show": "%7.0f MB/s  (%.2f s; daemon cpu %s, dd cpu %.2f s)"
                    % (v, wall, "-" if dcpu is None else "%.2f s" % dcpu, ccpu)}


def fuse_seq():
    log("\n== FUSE sequential read of the whole disk (dd bs=1M), fresh mount per sample")
    peer_of = {"raw": "xmount", "qcow2": "qcowmount", "zlib": "qcowmount",
               "zstd": "qcowmount", "vmdk": "vmdkmount"}
    for key in IMAGES:
        path = img(key)
        warm(path)
        peer = peer_of[key]

        def ours(rep, key=key, path=path):
            _, pid = fuse_mount([VDISK_MOUNT, path, MNT], "vdisk-mount-%s-%d" % (key, rep))
            try:
                return read_file_sample(os.path.join(MNT, "disk"), "dd-fuse-%s-ours-%d" % (key, rep), pid)
            finally:
                unmount()

        def theirs(rep, key=key, path=path, peer=peer):
            if peer == "xmount":
                cmd, f = ["xmount", "--in", "raw", path, MNT], os.path.basename(path).rsplit(".", 1)[0] + ".dd"
            elif peer == "qcowmount":
                cmd, f = ["qcowmount", path, MNT], "qcow1"
            else:
                cmd, f = ["vmdkmount", path, MNT], "vmdk1"
            _, pid = fuse_mount(cmd, "%s-%s-%d" % (peer, key, rep))
            try:
                return read_file_sample(os.path.join(MNT, f), "dd-fuse-%s-%s-%d" % (key, peer, rep), pid)
            finally:
                unmount()

        s, err = alternate([("ours", ours), (peer, theirs)], "FUSE seq " + IMAGES[key][2])
        tgt = {"kind": "ratio", "value": 1.5} if peer in ("qcowmount", "vmdkmount") else None
        note = None
        if peer in err and "incompatible features" in err[peer]:
            note = ("%s (libqcow) refuses qcow2 incompatible feature bit 3 (compression type), "
                    "so it cannot read zstd-compressed qcow2" % peer)
        add_row("fuse-seq", "FUSE seq read " + IMAGES[key][2], "MB/s", True, s["ours"], peer,
                s[peer], tgt, err, note=note)


# ---------------------------------------------------------- filesystem view

FS_OFFSET = 1 << 20


def fs_view():
    log("\n== Filesystem view (ext4 in p1): read the 1 GiB big.txt; ls -l a 10 000-entry directory")
    log("   ours: vdisk-mount -m p1; yardstick: mount -o ro,loop,noload,offset=1MiB (kernel ext4)")
    raw, qcow = os.path.join(CACHE, "fs.raw"), os.path.join(CACHE, "fs.qcow2")
    warm(raw)
    warm(qcow)

    def mount_ours(image, name):
        return fuse_mount([VDISK_MOUNT, "-m", "p1", image, MNT], name)[1]

    def read_with(which):
        def fn(rep):
            name = "fsread-%s-%d" % (which, rep)
            if which == "kernel":
                kernel_mount(raw, FS_OFFSET)
                pid = None
            else:
                pid = mount_ours(raw if which == "ours-raw" else qcow, "mount-" + name)
            try:
                return read_file_sample(os.path.join(MNT, "big.txt"), name, pid)
            finally:
                unmount()
        return fn

    def ls_with(which):
        def fn(rep):
            name = "ls-%s-%d" % (which, rep)
            if which == "kernel":
                kernel_mount(raw, FS_OFFSET)
                pid = None
            else:
                pid = mount_ours(raw if which == "ours-raw" else qcow, "mount-" + name)
            try:
                c0 = cpu_seconds(pid) if pid else None
                wall, ccpu, rc = run_timed(["ls", "-l", os.path.join(MNT, "dir10k")], name)
                dcpu = daemon_cpu_during(pid, c0)
                oth = others(wall, ccpu, dcpu)
                if rc != 0:
                    raise RuntimeError("ls exit %d: %s" % (rc, tail(name + ".err")))
                with open(os.path.join(LOGS, name + ".out")) as f:
                    n = sum(1 for _ in f) - 1
                if n != 10000:
                    raise RuntimeError("ls -l listed %d entries, not 10000" % n)
            finally:
                unmount()
            ms = round(wall * 1000, 1)
            return {"value": ms, "wall_s": round(wall, 4), "client_cpu_s": round(ccpu, 3),
                    "daemon_cpu_s": dcpu, "other_cores": oth,
                    "show": "%7.1f ms  (daemon cpu %s, ls cpu %.3f s)"
                            % (ms, "-" if dcpu is None else "%.3f s" % dcpu, ccpu)}
        return fn

    s, err = alternate([("ours-raw", read_with("ours-raw")), ("ours-qcow2", read_with("ours-qcow2")),
                        ("kernel", read_with("kernel"))], "fs read 1 GiB file")
    add_row("fs-view", "FS view read 1 GiB file (raw)", "MB/s", True, s["ours-raw"], "kernel",
            s["kernel"], None, err, ours_name="ours-raw")
    add_row("fs-view", "FS view read 1 GiB file (qcow2)", "MB/s", True, s["ours-qcow2"], "kernel",
            s["kernel"], None, err, ours_name="ours-qcow2",
            note="kernel yardstick is the raw disk (the kernel cannot loop-mount qcow2)")
    s, err = alternate([("ours-raw", ls_with("ours-raw")), ("ours-qcow2", ls_with("ours-qcow2")),
                        ("kernel", ls_with("kernel"))], "ls -l 10 000 entries")
    add_row("fs-view", "FS view ls -l 10k dir (raw)", "ms", False, s["ours-raw"], "kernel",
            s["kernel"], None, err, ours_name="ours-raw")
    add_row("fs-view", "FS view ls -l 10k dir (qcow2)", "ms", False, s["ours-qcow2"], "kernel",
            s["kernel"], None, err, ours_name="ours-qcow2")


# --------------------------------------------------------------- mount ready

def guestmount_probe(image):
    """Start guestmount once, untimed (also builds libguestfs's appliance cache).
    Returns (env to use, backend note) or raises with the reason."""
    reasons = []
    for settings in (None, "force_tcg"):
        env = dict(os.environ, LIBGUESTFS_DEBUG="1")
        if settings:
            env["LIBGUESTFS_BACKEND_SETTINGS"] = settings
        name = "guestmount-probe-%s" % (settings or "default")
        try:
            fuse_mount(["guestmount", "--format=qcow2", "-a", image, "-m", "/dev/sda1", "--ro", MNT],
                       name, env=env, timeout=300)
        except RuntimeError:
            why = ""
            try:
                with open(os.path.join(LOGS, name + ".err"), errors="replace") as f:
                    for line in f:
                        if re.search(r"qemu-system\S*: (error|.*Assertion)|Could not access KVM|"
                                     r"failed to initialize", line):
                            why = line.strip()
                            break
                        if not why and line.startswith("libguestfs: error:"):
                            why = line.strip()
            except OSError:
                pass
            reasons.append("%s: %s" % (settings or "default (KVM)", why or tail(name + ".err", 2)))
            continue
        unmount(tool="guestmount")
        env.pop("LIBGUESTFS_DEBUG")
        if settings:
            return env, "TCG (KVM unusable here: %s)" % reasons[0]
        return env, "KVM"
    raise RuntimeError("; ".join(reasons))


def mount_ready():
    log("\n== Time from command to a readable mount: MOUNT && cat MNT/hello.txt (fs.qcow2, p1)")
    image = os.path.join(CACHE, "fs.qcow2")
    warm(image)

    def ours(rep):
        name = "ready-ours-%d" % rep
        wall, _ = fuse_mount(["sh", "-c", '"$0" -m p1 "$1" "$2" && cat "$2/hello.txt"',
                              VDISK_MOUNT, image, MNT], name)
        unmount()
        if "hello" not in open(os.path.join(LOGS, name + ".out")).read():
            raise RuntimeError("hello.txt not read")
        ms = round(wall * 1000, 1)
        return {"value": ms, "wall_s": round(wall, 4), "show": "%8.1f ms" % ms}

    gm = {}

    def guest(rep):
        if "env" not in gm:
            log("  (guestmount: untimed first start, to build its appliance and find a backend)")
            gm["env"], gm["backend"] = guestmount_probe(image)
            log("  guestmount backend: %s" % gm["backend"])
        name = "ready-guestmount-%d" % rep
        wall, _ = fuse_mount(["sh", "-c", 'guestmount --format=qcow2 -a "$0" -m /dev/sda1 --ro "$1" '
                              '&& cat "$1/hello.txt"', image, MNT], name, env=gm["env"], timeout=300)
        unmount(tool="guestmount")
        ms = round(wall * 1000, 1)
        return {"value": ms, "wall_s": round(wall, 4), "show": "%8.1f ms" % ms}

    s, err = alternate([("ours", ours), ("guestmount", guest)], "mount ready")
    note = None
    if "backend" in gm:
        note = "guestmount backend: " + gm["backend"]
    add_row("mount-ready", "Mount ready (cmd to first read)", "ms", False, s["ours"], "guestmount",
            s["guestmount"], {"kind": "abs", "value": 50, "op": "<"}, err, note=note)


# --------------------------------------------------------------------- perf

def perf_profiles():
    """For rows of ours that miss a ratio target: one more run of ours with
    perf record on the server's PID (all its threads, user and kernel)."""
    if not shutil.which("perf"):
        RESULTS["notes"].append("BENCH_PERF: perf not installed")
        return
    for row in RESULTS["rows"]:
        if row.get("verdict") != "missed" or row["group"] not in ("nbd-seq", "nbd-randread"):
            continue
        key = next((k for k in IMAGES if row["test"].endswith(" " + IMAGES[k][2])), None)
        if key is None:
            continue
        tag = re.sub(r"[^a-z0-9]+", "-", row["test"].lower()).strip("-")
        data = os.path.join(TMP, "perf-%s.data" % tag)
        srv = Server("ours", img(key), IMAGES[key][1])
        try:
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "999", "-p", str(srv.pid),
                                     "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            SERVERS[perf.pid] = perf
            time.sleep(0.5)
            if row["group"] == "nbd-seq":
                run_timed(["nbdcopy", srv.uri, "null:"], "perf-" + tag)
            else:
                run_timed(fio_cmd(srv.uri, "randread", "4k"), "perf-" + tag)
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
            SERVERS.pop(perf.pid, None)
        finally:
            srv.stop()
        outp = os.path.join(OUT, "perf-%s.txt" % tag)
        with open(outp, "w") as f:
            f.write("# perf record -g -p <vdisk-nbd> during: %s\n" % row["test"])
            for sort, limit in (("dso", "0.5"), ("dso,symbol", "1")):
                f.flush()
                subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-q",
                                "--sort", sort, "--percent-limit", limit, "-g", "none"],
                               stdout=f, stderr=subprocess.DEVNULL)
                f.write("\n")
        os.unlink(data)
        RESULTS["notes"].append("perf profile of ours, %s: %s" % (row["test"], outp))
        log("  perf: %s" % outp)


# --------------------------------------------------------------------- main

def env_info():
    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=20).stdout.strip() or \
                subprocess.run(c, capture_output=True, text=True, timeout=20).stderr.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    e = RESULTS["env"]
    e["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    e["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    e["uname"] = " ".join(os.uname())
    e["cpus"] = os.cpu_count()
    e["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1)
    e["git"] = cmd("git", "-C", top, "describe", "--always", "--dirty")
    e["ours_sha256"] = cmd("sha256sum", VDISK_NBD, VDISK_MOUNT).replace(BIN + "/", "")
    e["reps"] = REPS
    e["fio_secs"] = FIO_SECS
    e["versions"] = {
        "qemu-nbd": cmd("qemu-nbd", "--version").splitlines()[0],
        "nbdkit": cmd("nbdkit", "--version"),
        "nbdcopy": cmd("nbdcopy", "--version").splitlines()[0],
        "fio": cmd("fio", "--version"),
        "qcowmount": cmd("qcowmount", "-V").splitlines()[0],
        "vmdkmount": cmd("vmdkmount", "-V").splitlines()[0],
        "xmount": cmd("xmount", "--version").splitlines()[0],
        "guestmount": cmd("guestmount", "--version"),
    }
    sizes = {}
    for f in sorted(os.listdir(CACHE)):
        p = os.path.join(CACHE, f)
        if os.path.isfile(p) and f != "RECIPE":
            sizes[f] = {"bytes": os.path.getsize(p), "allocated": os.stat(p).st_blocks * 512}
    e["images"] = sizes
    e["cache_policy"] = ("image files kept in the page cache (read once before each group; never "
                         "drop_caches); FUSE/loop mounts remounted and NBD servers restarted for "
                         "every sample")


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("bench.py: prctl(PR_SET_CHILD_SUBREAPER) failed")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    os.makedirs(LOGS, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):   # profiles of an earlier run would look like this run's
        if f.startswith("perf-") and f.endswith(".txt"):
            os.unlink(os.path.join(OUT, f))
    env_info()
    t0 = time.monotonic()
    log("vdisk bench: %s, load average %s, %d repetitions, fio %d s"
        % (RESULTS["env"]["date"], " ".join(RESULTS["env"]["loadavg_start"]), REPS, FIO_SECS))
    try:
        for name, fn in (("nbd-seq", nbd_seq), ("nbd-randread", nbd_randread),
                         ("nbd-randwrite", nbd_randwrite), ("rss", rss), ("fuse-seq", fuse_seq),
                         ("fs-view", fs_view), ("mount-ready", mount_ready)):
            if ONLY.search(name):
                b0 = system_busy()
                time.sleep(1)
                RESULTS["env"].setdefault("background_cores", {})[name] = round(system_busy() - b0, 2)
                g0 = time.monotonic()
                fn()
                RESULTS["env"].setdefault("group_secs", {})[name] = round(time.monotonic() - g0, 1)
        if PERF:
            log("\n== perf profiles of ours where it misses a target")
            perf_profiles()
    finally:
        cleanup()
        RESULTS["env"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        RESULTS["env"]["total_secs"] = round(time.monotonic() - t0, 1)
        save()
    text = report.render(RESULTS, OUT)
    log("\n" + text)


if __name__ == "__main__":
    main()
