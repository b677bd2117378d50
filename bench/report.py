#!/usr/bin/env python3
"""Renders bench/run's results file as docs/benchmarks.md.

  report.py RESULTS TEMPLATE   the whole document (TEMPLATE with {{...}} filled in)
  report.py --table RESULTS    only the results tables (what bench/run prints)

Every number, ratio and verdict is computed here from the measurements.
"""

import statistics
import sys


def load(path):
    res = {}
    for line in open(path).read().splitlines():
        if line.strip():
            key, _, rest = line.partition(" ")
            res[key] = rest.strip()
    return res


def nums(res, key):
    return [float(v) for v in res[key].split()]


def med(res, key):
    return statistics.median(nums(res, key))


def fmt(v, digits=1):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def verdict(ok):
    return "yes" if ok else "**NO**"


class Report:
    def __init__(self, res):
        self.r = res
        self.targets = []  # (name, met, detail)
        r = res
        self.sha = float(r["limit_sha256"])
        self.fsync = med(r, "limit_fsync")
        self.dl_limit = med(r, "limit_download")
        self.load = {}
        for srv in ("berth", "dist"):
            self.load[srv] = {
                k: dict(zip(("rps", "p50", "p99", "errors", "requests"),
                            (float(x) for x in r[f"{srv}.{k}"].split())))
                for k in ("get", "ab_GET", "ab_HEAD")
            }
        self._rows = self.rows()  # also fills self.targets

    def upload_row(self, label, key):
        b, d = med(self.r, f"berth.{key}"), med(self.r, f"dist.{key}")
        vs_dist, vs_sha = b / d, b / self.sha
        ok = vs_dist >= 3 and vs_sha >= 0.5
        detail = f"{vs_dist:.2f}× Distribution, {vs_sha:.0%} of SHA-256"
        self.targets.append((label, ok, detail))
        return [label, fmt(b), fmt(d),
                f"SHA-256: {fmt(self.sha)}; write + fsync: {fmt(self.fsync)}",
                f"≥ 3× Distribution (≥ {fmt(3 * d)}) and ≥ 50% of SHA-256 (≥ {fmt(self.sha / 2)})",
                f"{verdict(ok)} ({detail})"]

    def rows(self):
        r, L = self.r, self.load
        rows = [
            self.upload_row("Monolithic upload, 256 MiB (MiB/s)", "mono"),
            self.upload_row("Chunked upload, 256 MiB in 8 MiB PATCHes (MiB/s)", "chunked"),
        ]
        b, d = med(r, "berth.download"), med(r, "dist.download")
        ok = b >= 0.9 * self.dl_limit
        detail = f"{b / self.dl_limit:.0%} of the limit"
        self.targets.append(("Blob download", ok, detail))
        rows.append(["Blob download, 1 GiB (MiB/s)", fmt(b), fmt(d),
                     f"curl from a zero-copy server: {fmt(self.dl_limit)}",
                     f"≥ 90% of the limit (≥ {fmt(0.9 * self.dl_limit)})",
                     f"{verdict(ok)} ({detail})"])

        bg, dg = L["berth"]["get"], L["dist"]["get"]
        ok = bg["rps"] >= 10 * dg["rps"]
        detail = f"{bg['rps'] / dg['rps']:.1f}× Distribution"
        self.targets.append(("Manifest GET requests/s", ok, detail))
        rows.append(["Manifest GET by tag, wrk (requests/s)", fmt(bg["rps"]), fmt(dg["rps"]), "—",
                     f"≥ 10× Distribution (≥ {fmt(10 * dg['rps'])})", f"{verdict(ok)} ({detail})"])
        rows.append(["Manifest GET by tag, wrk: p50 latency (ms)", ms(bg["p50"]), ms(dg["p50"]),
                     "—", "—", "—"])
        ok = bg["p99"] < 5
        self.targets.append(("Manifest GET p99", ok, f"{ms(bg['p99'])} ms"))
        rows.append(["Manifest GET by tag, wrk: p99 latency (ms)", ms(bg["p99"]), ms(dg["p99"]),
                     "—", "< 5 ms", verdict(ok)])
        for method in ("HEAD", "GET"):
            bb, dd = L["berth"][f"ab_{method}"], L["dist"][f"ab_{method}"]
            ratio = f"{bb['rps'] / dd['rps']:.1f}× Distribution"
            rows.append([f"Manifest {method} by tag, ab (requests/s)", fmt(bb["rps"]),
                         fmt(dd["rps"]), "—", "— (no target)", ratio])
            rows.append([f"Manifest {method} by tag, ab: p50 / p99 latency (ms)",
                         f"{ms(bb['p50'])} / {ms(bb['p99'])}", f"{ms(dd['p50'])} / {ms(dd['p99'])}",
                         "—", "—", "—"])

        b, d = float(r["berth.rss_peak"]), float(r["dist.rss_peak"])
        ok = b < 64
        self.targets.append(("Peak RSS during a 1 GiB upload", ok, f"{fmt(b)} MiB"))
        rows.append(["Peak RSS during a 1 GiB upload (MiB)", fmt(b), fmt(d), "—", "< 64 MiB",
                     verdict(ok)])
        rows.append(["(that 1 GiB monolithic upload, MiB/s)", fmt(float(r["berth.big_upload"])),
                     fmt(float(r["dist.big_upload"])), "—", "—", "—"])
        return rows

    def main_table(self):
        head = ["Measure", "berth", "Distribution 2.8.2", "Machine limit", "Target", "Met"]
        return table(head, self._rows)

    def limits_table(self):
        r = self.r
        return table(["Machine limit", "Value (median)", "Runs", "How"], [
            ["SHA-256, one core (MiB/s)", fmt(self.sha), fmt(self.sha),
             "`openssl speed -evp sha256 -bytes 16384 -seconds 3`"],
            ["Write + fsync 256 MiB (MiB/s)", fmt(self.fsync), samples(r, "limit_fsync"),
             "`dd if=/dev/zero bs=1M count=256 conv=fsync`, in the temp dir of both stores"],
            ["Loopback HTTP download with curl, 1 GiB (MiB/s)", fmt(self.dl_limit),
             samples(r, "limit_download"),
             "curl from a one-file Python server that sends with `sendfile(2)`"],
            ["(for reference) the same, server copying through user space (MiB/s)",
             fmt(med(r, "copy_download")), samples(r, "copy_download"),
             "the same server reading into a reused 256 KiB buffer and sending it"],
        ])

    def cpu_table(self):
        r = self.r
        rows = []
        for label, key in (("Monolithic upload, 256 MiB (CPU s per GiB)", "cpu_mono"),
                           ("Chunked upload, 256 MiB (CPU s per GiB)", "cpu_chunked"),
                           ("Monolithic upload, 1 GiB (CPU s per GiB)", "cpu_big"),
                           ("Download, 1 GiB (CPU s per GiB)", "cpu_download")):
            b, d = med(r, f"berth.{key}"), med(r, f"dist.{key}")
            rows.append([label, f"{b:.2f}", f"{d:.2f}", f"{b / d:.2f}" if d else "—"])
        b, d = float(r["berth.cpu_get_us"]), float(r["dist.cpu_get_us"])
        rows.append(["Manifest GET, wrk (CPU µs per request)", fmt(b), fmt(d), f"{b / d:.2f}"])
        return table(["Server CPU time (user + system)", "berth", "Distribution 2.8.2",
                      "berth / Distribution"], rows)

    def samples_table(self):
        r = self.r
        rows = []
        for label, key in (("Monolithic upload (MiB/s)", "mono"),
                           ("Chunked upload (MiB/s)", "chunked"),
                           ("Download (MiB/s)", "download"),
                           ("Monolithic upload (CPU s per GiB)", "cpu_mono"),
                           ("Chunked upload (CPU s per GiB)", "cpu_chunked"),
                           ("Download (CPU s per GiB)", "cpu_download")):
            rows.append([label, samples(r, f"berth.{key}", 2 if "cpu" in key else 1),
                         samples(r, f"dist.{key}", 2 if "cpu" in key else 1)])
        rows.append(["RSS before / peak during the 1 GiB upload (MiB)",
                     f"{r['berth.rss_before']} / {r['berth.rss_peak']}",
                     f"{r['dist.rss_before']} / {r['dist.rss_peak']}"])
        for k, label in (("get", "wrk GET"), ("ab_GET", "ab GET"), ("ab_HEAD", "ab HEAD")):
            rows.append([f"{label}: requests in {r['duration']} s, errors",
                         f"{self.load['berth'][k]['requests']:.0f}, {self.load['berth'][k]['errors']:.0f}",
                         f"{self.load['dist'][k]['requests']:.0f}, {self.load['dist'][k]['errors']:.0f}"])
        return table(["Every run", "berth", "Distribution 2.8.2"], rows)

    def machine(self):
        r = self.r
        return "\n".join([
            f"- Date: {r['date']}",
            f"- Machine: {r['nproc']} cores ({r['cpu']}), {r['mem']} memory, Linux {r['kernel']}; "
            f"stores and data files on {r['fs']}",
            f"- berth commit: `{r['commit']}`; Docker Distribution {r['distribution']} (Debian package)",
            f"- Clients: {r['tools']}",
            f"- Load average (1, 5, 15 min) at start: {r['load_start']}; at end: {r['load_end']}",
            f"- Repetitions: {r['runs']} of each throughput measure (the tables show the median); "
            f"{r['duration']} s per request-rate measure",
        ])

    def summary(self):
        met = [t for t in self.targets if t[1]]
        missed = [t for t in self.targets if not t[1]]
        out = [f"{len(met)} of {len(self.targets)} targets met in this run."]
        if met:
            out.append("- Met: " + "; ".join(f"{n} ({d})" for n, _, d in met) + ".")
        if missed:
            out.append("- Missed: " + "; ".join(f"{n} ({d})" for n, _, d in missed) + ".")
        return "\n".join(out)


def samples(r, key, digits=1):
    return ", ".join(fmt(v, digits) for v in nums(r, key))


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    if sys.argv[1] == "--table":
        rep = Report(load(sys.argv[2]))
        print(rep.machine() + "\n\n" + rep.main_table() + "\n\n" + rep.limits_table()
              + "\n\n" + rep.cpu_table() + "\n\n" + rep.summary())
        return
    rep = Report(load(sys.argv[1]))
    text = open(sys.argv[2]).read()
    parts = {
        "MACHINE": rep.machine(),
        "TABLE": rep.main_table(),
        "LIMITS": rep.limits_table(),
        "CPU": rep.cpu_table(),
        "SAMPLES": rep.samples_table(),
        "SUMMARY": rep.summary(),
    }
    for k, v in parts.items():
        text = text.replace("{{" + k + "}}", v)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
