#!/usr/bin/python3
"""report.py RESULTS.json [OUT_DIR] — render the benchmark's results.

Used by bench.py at the end of a run; can be run again on a results.json to
re-render.  Writes OUT_DIR/table.txt, results.tsv and ratios.png (matplotlib,
Agg backend) and prints the table.

Per row: medians of the samples' "value", ratio = ours median / peer median in
the row's unit, and "advantage" = how many times better ours is (the ratio
when higher is better, its inverse when lower is better: times, sizes).
Thread model: none.
"""
import json
import os
import statistics
import sys

TARGET_TITLES = {
    ("nbd-seq", 1.2): "uncompressed qcow2 and raw sequential read >= 1.2x qemu-nbd",
    ("nbd-seq", 3.0): "compressed qcow2 (zlib, zstd) and streamOptimized vmdk sequential read >= 3x qemu-nbd",
    ("nbd-randread", 2.0): "qcow2 4 KiB random read IOPS >= 2x qemu-nbd",
    ("fuse-seq", 1.5): "FUSE sequential read >= 1.5x qcowmount/vmdkmount",
    ("mount-ready", 50): "mount ready in under 50 ms",
    ("rss", 64): "peak RSS under 64 MiB serving the 1 TiB image",
}


def med(samples, key="value"):
    v = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(v) if v else None


def finish_rows(results):
    """Fill in medians, ratio, advantage and verdict of every row."""
    for r in results["rows"]:
        o, p = med(r["ours_samples"]), med(r["peer_samples"])
        r["ours_median"], r["peer_median"] = o, p
        r["ratio"] = round(o / p, 3) if (o and p) else None
        if r["ratio"]:
            # from the unrounded ratio: 16.7 ms against 12143 ms is 727x, not 1/0.001
            r["advantage"] = round(o / p if r["higher_is_better"] else p / o, 3)
        else:
            r["advantage"] = None
        t = r.get("target")
        r["verdict"], r["verdict_text"] = None, ""
        if not t:
            continue
        if t["kind"] == "ratio":
            a = r["advantage"]
            if a is None:
                r["verdict"] = "not measured"
                r["verdict_text"] = "not measured: peer not available"
            elif a >= t["value"]:
                r["verdict"] = "met"
                r["verdict_text"] = "met: %.2fx (target >= %gx, %.0f%% above)" % (
                    a, t["value"], (a / t["value"] - 1) * 100)
            else:
                r["verdict"] = "missed"
                r["verdict_text"] = "missed: %.2fx, target >= %gx (needs %.2fx more, %.0f%% short)" % (
                    a, t["value"], t["value"] / a, (1 - a / t["value"]) * 100)
        else:
            if o is None:
                r["verdict"] = "not measured"
                r["verdict_text"] = "not measured"
            elif o < t["value"]:
                r["verdict"] = "met"
                r["verdict_text"] = "met: %.1f %s (target < %g %s, %.0f%% margin)" % (
                    o, r["unit"], t["value"], r["unit"], (1 - o / t["value"]) * 100)
            else:
                r["verdict"] = "missed"
                r["verdict_text"] = "missed: %.1f %s, target < %g %s (%.2fx over)" % (
                    o, r["unit"], t["value"], r["unit"], o / t["value"])


def fmt_num(v, unit):
    if v is None:
        return "-"
    if unit == "IOPS":
        return "%d" % round(v)
    if unit == "ms" and v >= 1000:
        return "%.0f" % v
    if abs(v) >= 100:
        return "%.0f" % v
    return "%.1f" % v


def target_str(r):
    t = r.get("target")
    if not t:
        return ""
    return (">=%gx" % t["value"]) if t["kind"] == "ratio" else ("<%g %s" % (t["value"], r["unit"]))


def table(results):
    e = results["env"]
    lines = []
    lines.append("vdisk bench  %s  load average %s (start) %s (end)  %s CPUs  %s reps  fio %s s  %s s total"
                 % (e.get("date"), " ".join(e.get("loadavg_start", [])),
                    " ".join(e.get("loadavg_end", [])), e.get("cpus"), e.get("reps"),
                    e.get("fio_secs"), e.get("total_secs")))
    lines.append("ours: %s (git %s)" % (e.get("ours_sha256", "").replace("\n", ", "), e.get("git")))
    lines.append("cache: " + e.get("cache_policy", ""))
    bg = e.get("background_cores") or {}
    if bg:
        m = max(bg.values())
        lines.append("background load (cores busy in a 1 s pause before each group, from /proc/stat): %s%s"
                     % (", ".join("%s %.2f" % kv for kv in bg.items()),
                        "  WARNING: other work on this machine; timings are noisy" if m > 0.25 else ""))
    lines.append("")
    hdr = "%-34s %-11s %-11s %9s %9s %6s %9s %6s  %-8s %s" % (
        "test", "ours", "peer", "ours", "peer", "unit", "ours/peer", "better", "target", "verdict")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results["rows"]:
        peer_m = fmt_num(r["peer_median"], r["unit"])
        if r["peer_median"] is None and r.get("peer_error"):
            peer_m = "n/a"
        lines.append("%-34s %-11s %-11s %9s %9s %6s %9s %6s  %-8s %s" % (
            r["test"][:34], r["ours_name"], r["peer_name"] or "-",
            fmt_num(r["ours_median"], r["unit"]), peer_m, r["unit"],
            "-" if r["ratio"] is None else "%.3g" % r["ratio"],
            "-" if r["advantage"] is None else "%.2fx" % r["advantage"],
            target_str(r), r["verdict"] or ""))
    unavailable = [r for r in results["rows"] if r.get("peer_error") or r.get("ours_error")]
    if unavailable:
        lines.append("")
        seen = set()
        for r in unavailable:
            for who in ("ours", "peer"):
                err = r.get(who + "_error")
                name = r["ours_name"] if who == "ours" else r["peer_name"]
                if err and (name, err) not in seen:
                    seen.add((name, err))
                    lines.append("not available: %s (%s): %s" % (name, r["test"], err))
    notes = [(r["test"], r["note"]) for r in results["rows"] if r.get("note")]
    for t, n in notes:
        lines.append("note: %s: %s" % (t, n))
    for n in results.get("notes", []):
        lines.append("note: " + n)

    # CPU split: where the time goes, per tool (medians).
    lines.append("")
    lines.append("CPU per sample (medians): wall; CPU-seconds of the server/FUSE daemon and of the client "
                 "(nbdcopy/fio/dd/ls);")
    lines.append("cores = their CPU / wall; others = cores busy meanwhile (/proc/stat) not charged to them: "
                 "other users of the machine,")
    lines.append("kernel threads (the loop device's), and tick-accounting slack, which is large with FUSE's "
                 "many short sleeps (so read it as an upper bound)")
    lines.append("%-34s %-11s %8s %10s %10s %7s %7s" % ("test", "tool", "wall s", "server s", "client s",
                                                    "cores", "others"))
    seen = set()
    for r in results["rows"]:
        for who in ("ours", "peer"):
            name = r["ours_name"] if who == "ours" else r["peer_name"]
            ss = r[who + "_samples"]
            if (r["test"], name) in seen or not ss:
                continue
            seen.add((r["test"], name))
            w = med(ss, "wall_s")
            sc = med(ss, "server_cpu_s")
            if sc is None:
                sc = med(ss, "daemon_cpu_s")
            cc = med(ss, "client_cpu_s")
            if sc is None and cc is None:
                continue
            cores = ((sc or 0) + (cc or 0)) / w if w else None
            oc = med(ss, "other_cores")
            lines.append("%-34s %-11s %8s %10s %10s %7s %7s" % (
                r["test"][:34], name, "-" if w is None else "%.2f" % w,
                "-" if sc is None else "%.2f" % sc, "-" if cc is None else "%.2f" % cc,
                "-" if cores is None else "%.2f" % cores, "-" if oc is None else "%.2f" % oc))

    # CPU efficiency: less disturbed by other work than wall-clock throughput.
    lines.append("")
    lines.append("Server CPU per unit of work (medians; peer/ours = the speed-up ours would show if both were CPU-bound on the same cores):")
    lines.append("%-34s %-11s %12s %12s %10s" % ("test", "vs", "ours", "peer", "peer/ours"))
    for r in results["rows"]:
        if r["group"] in ("nbd-seq", "fuse-seq"):
            key, unit = ("server_cpu_s" if r["group"] == "nbd-seq" else "daemon_cpu_s"), "s/GiB"
        elif r["group"] in ("nbd-randread", "nbd-randwrite"):
            key, unit = "server_us_per_io", "us/IO"
        else:
            continue
        o, p = med(r["ours_samples"], key), med(r["peer_samples"], key)
        if o is None:
            continue
        lines.append("%-34s %-11s %12s %12s %10s" % (
            r["test"][:34], r["peer_name"], "%.2f %s" % (o, unit),
            "-" if p is None else "%.2f %s" % (p, unit), "-" if not (p and o) else "%.2fx" % (p / o)))

    # Targets of issue 8.
    lines.append("")
    lines.append("Targets (issue 8):")
    for (group, value), title in TARGET_TITLES.items():
        rows = [r for r in results["rows"] if r["group"] == group and r.get("target")
                and r["target"]["value"] == value]
        if not rows:
            lines.append("  %s: not run" % title)
            continue
        verdicts = {r["verdict"] for r in rows}
        overall = "MET" if verdicts == {"met"} else ("MISSED" if "missed" in verdicts else "NOT MEASURED")
        lines.append("  [%s] %s" % (overall, title))
        for r in rows:
            lines.append("      %-34s vs %-10s %s" % (r["test"], r["peer_name"], r["verdict_text"]))
    return "\n".join(lines) + "\n"


def tsv(results, path):
    cols = ["group", "test", "ours", "peer", "ours_median", "peer_median", "ratio_ours_over_peer",
            "unit", "higher_is_better", "advantage", "target", "verdict", "ours_samples", "peer_samples"]
    with open(path, "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in results["rows"]:
            f.write("\t".join(str(x) for x in [
                r["group"], r["test"], r["ours_name"], r["peer_name"] or "",
                "" if r["ours_median"] is None else r["ours_median"],
                "" if r["peer_median"] is None else r["peer_median"],
                "" if r["ratio"] is None else r["ratio"], r["unit"], int(r["higher_is_better"]),
                "" if r["advantage"] is None else r["advantage"], target_str(r), r["verdict"] or "",
                ",".join(str(s["value"]) for s in r["ours_samples"]),
                ",".join(str(s["value"]) for s in r["peer_samples"])]) + "\n")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in results["rows"] if r["advantage"] is not None and r["group"] not in ("rss", "mount-ready")]
    absrows = [r for r in results["rows"] if r["group"] in ("rss", "mount-ready")
               and r.get("target") and r["ours_median"] is not None]
    fig = plt.figure(figsize=(15, max(6, 0.42 * len(rows) + 2.5)))
    gs = fig.add_gridspec(max(1, len(absrows)), 2, width_ratios=[2.8, 1], wspace=0.3, hspace=0.6)
    ax = fig.add_subplot(gs[:, 0])
    labels, vals, colors = [], [], []
    for r in rows:
        labels.append("%s\nvs %s" % (r["test"], r["peer_name"]) if r["ours_name"] == "ours"
                      else "%s [%s]\nvs %s" % (r["test"], r["ours_name"], r["peer_name"]))
        vals.append(r["advantage"])
        colors.append({"met": "#2e8b57", "missed": "#c0392b"}.get(r["verdict"], "#5b7fa6"))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, vals, color=colors, height=0.65)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1)
    for yi, r, v in zip(y, rows, vals):
        ax.text(v * 1.03, yi, "%.2fx" % v, va="center", fontsize=8)
        t = r.get("target")
        if t and t["kind"] == "ratio":
            ax.plot([t["value"], t["value"]], [yi - 0.42, yi + 0.42], color="#e67e22", lw=2.5)
            ax.text(t["value"], yi + 0.38, " target %gx" % t["value"], fontsize=7, color="#a0522d",
                    va="bottom")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7.5)
    lo = min(vals + [0.5]) * 0.8
    hi = max(vals + [3.5]) * 1.5
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.2, 1.5, 2, 3, 5, 10, 20, 50, 100, 300, 1000)
             if lo <= t <= hi]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(["%gx" % t for t in ticks]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("how many times better ours is (ours/peer for throughput, peer/ours for times); log scale")
    ax.set_title("vdisk vs peers (medians of %s runs)\ngreen: target met, red: missed, "
                 "blue: no target; orange ticks: targets of issue 8" % results["env"].get("reps"),
                 fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)

    for i, r in enumerate(absrows):
        a = fig.add_subplot(gs[i, 1])
        names = [r["ours_name"]] + ([r["peer_name"]] if r["peer_median"] is not None else [])
        v = [r["ours_median"]] + ([r["peer_median"]] if r["peer_median"] is not None else [])
        c = ["#2e8b57" if r["verdict"] == "met" else "#c0392b"] + ["#999999"] * (len(v) - 1)
        a.bar(names, v, color=c)
        a.axhline(r["target"]["value"], color="#e67e22", lw=2, ls="--")
        a.text(0.98, r["target"]["value"], "target < %g %s" % (r["target"]["value"], r["unit"]),
               transform=a.get_yaxis_transform(), ha="right", va="bottom", fontsize=8, color="#a0522d")
        if max(v) / max(min(v), 1e-9) > 30:
            a.set_yscale("log")
        for xi, vi in enumerate(v):
            a.text(xi, vi, fmt_num(vi, r["unit"]), ha="center", va="bottom", fontsize=8)
        a.set_ylabel(r["unit"])
        title = r["test"]
        if r.get("peer_error") and r["peer_median"] is None:
            title += "\n(%s not available)" % r["peer_name"]
        a.set_title(title, fontsize=9)
    e = results["env"]
    fig.text(0.01, 0.005, "%s  load %s  git %s" % (e.get("date"), " ".join(e.get("loadavg_start", [])),
                                                    e.get("git")), fontsize=7, color="gray")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def render(results, out_dir):
    finish_rows(results)
    text = table(results)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(text)
    tsv(results, os.path.join(out_dir, "results.tsv"))
    try:
        plot(results, os.path.join(out_dir, "ratios.png"))
        text += "\nwrote %s/{results.json,results.tsv,table.txt,ratios.png}\n" % out_dir
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the plot
        text += "\nplot failed: %s\nwrote %s/{results.json,results.tsv,table.txt}\n" % (e, out_dir)
    return text


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        res = json.load(f)
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(sys.argv[1]))
    print(render(res, out), end="")
