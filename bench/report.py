#!/usr/bin/env python3
"""Renders bench/run's results file as docs/benchmarks.md.

  report.py RESULTS TEMPLATE [OLD]
                               the whole document (TEMPLATE with {{...}} filled
                               in); the sections other scripts write between
                               markers (bench/auth, bench/identity) are taken
                               from OLD, the current document, when it has them
  report.py --table RESULTS    only the results tables (what bench/run prints)
  report.py --auth RESULTS TEMPLATE DOC
                               bench/auth's results into DOC, between the
                               auth-bench markers (the template's section is
                               added first when DOC has no markers)
  report.py --auth-table RESULTS
                               bench/auth's results section (what it prints)

Every number, ratio and verdict is computed here from the measurements.
"""

import re
import statistics
import sys

# Sections written by other scripts than bench/run, between these markers.
MARKED = ("auth-bench", "identity-bench", "takeover-bench")


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


# ---- bench/auth ----

AUTH_NAMES = {
    "plain": "plain HTTP, no auth",
    "tls": "HTTPS, no auth",
    "token": "HTTP + token",
    "secure": "HTTPS + token",
}
AUTH_TARGET = 0.85


def auth_section(r):
    cfgs = r["configs"].split()
    m = lambda cfg, key: med(r, f"{cfg}.{key}")
    out = [
        f"Measured {r['date']}, berth `{r['commit']}`, {r['nproc']} cores ({r['cpu']}), "
        f"Linux {r['kernel']}; load average (1, 5, 15 min) {r['load_start']} at the start, "
        f"{r['load_end']} at the end. Clients: {r['tools']}. {r['runs']} runs of each measure, "
        f"the configurations in a rotating order; the tables show the median, every run is "
        f"listed at the end. HTTP/1.1 everywhere.",
        "",
    ]
    rows, met = [], []
    for label, key, unit in (
        ("Monolithic push, 256 MiB (MiB/s)", "mono", ""),
        ("Blob download, 1 GiB (MiB/s)", "download", ""),
        (f"Manifest GET by tag, wrk -t2 -c8 -d{r['duration']}s (requests/s)", "get", ""),
    ):
        p, s = m("plain", key), m("secure", key)
        ok = s >= AUTH_TARGET * p
        met.append((label.split(" (")[0], ok, f"{s / p:.0%}"))
        rows.append([label, fmt(p), fmt(s), f"{s / p:.2f}",
                     f"≥ {fmt(AUTH_TARGET * p)}", verdict(ok)])
    if "ref_http.download" in r:
        p, s = m("ref_http", "download"), m("ref_https", "download")
        rows.insert(2, ["(reference: the same download from a do-nothing server, "
                        "`sendfile(2)` / `openssl s_server -WWW`; MiB/s)",
                        fmt(p), fmt(s), f"{s / p:.2f}", "—", "—"])
    rows.append(["Manifest GET by tag: p50 / p99 latency (ms)",
                 f"{ms(m('plain', 'get_p50'))} / {ms(m('plain', 'get_p99'))}",
                 f"{ms(m('secure', 'get_p50'))} / {ms(m('secure', 'get_p99'))}", "—", "—", "—"])
    out.append(table(["Measure", AUTH_NAMES["plain"], AUTH_NAMES["secure"], "ratio",
                      f"target {AUTH_TARGET:.0%}", "met?"], rows))
    out.append("")
    n_met = sum(1 for t in met if t[1])
    out.append(f"{n_met} of {len(met)} targets met in this run ("
               + "; ".join(f"{n}: {d} of plain HTTP" for n, _, d in met) + ").")
    out.append("")

    # Every configuration measured: what TLS and the token each cost.
    head = ["Measure (median)"] + [AUTH_NAMES[c] for c in cfgs]
    split = []
    busy = lambda c, kind: m(c, f"client_{kind}") * m(c, kind) / 1024
    for label, key, digits in (
        ("Monolithic push, 256 MiB (MiB/s)", "mono", 1),
        ("… server CPU (s per GiB)", "cpu_mono", 2),
        ("… curl's CPU (s per GiB; share of one core)", "client_mono", 2),
        ("Blob download, 1 GiB (MiB/s)", "download", 1),
        ("… server CPU (s per GiB)", "cpu_download", 2),
        ("… curl's CPU (s per GiB; share of one core)", "client_download", 2),
        ("Manifest GET by tag (requests/s)", "get", 1),
        ("… server CPU (µs per request)", "cpu_get_us", 1),
        ("… wrk's CPU (µs per request)", "client_get_us", 1),
        ("… p50 / p99 latency (ms)", None, 0),
    ):
        if key is None:
            split.append([label] + [f"{ms(m(c, 'get_p50'))} / {ms(m(c, 'get_p99'))}" for c in cfgs])
        elif key.startswith("client_") and not key.endswith("_us"):
            kind = key[len("client_"):]
            split.append([label] + [f"{m(c, key):.2f}; {busy(c, kind):.0%}" for c in cfgs])
        else:
            split.append([label] + [f"{m(c, key):.{digits}f}" if digits == 2 else fmt(m(c, key))
                                    for c in cfgs])
    split.append(["The 1 GiB blob's monolithic push, one run (MiB/s)"]
                 + [fmt(float(r[f"{c}.big_upload"])) for c in cfgs])
    split.append(["TLS handshake of a curl connection, median (ms)"]
                 + [(f"{statistics.median(nums(r, f'{c}.hs_put') + nums(r, f'{c}.hs_download')):.2f}"
                     if f"{c}.tls_curl" in r else "—") for c in cfgs])
    split.append(["Token request (`GET /token`, Basic), median (ms)"]
                 + [(fmt(m(c, "token_ms"), 1) if f"{c}.token_ms" in r else "—") for c in cfgs])
    out.append("Server CPU: the CPU time (user + system) of the berth process during the "
               "measure, per unit of work; client CPU: the same for the client processes "
               "(curl, wrk; from the harness's children's times, 10 ms resolution). A "
               "share of one core near 100% means the single-threaded curl was the "
               "bottleneck.")
    out.append("")
    out.append(table(head, split))
    out.append("")

    if "secure.tls_curl" in r:
        tok = int(r["secure.token_bytes"])
        out.append(f"- TLS, HTTPS + token: curl negotiated {r['secure.tls_curl']}; "
                   f"`openssl s_client` with OpenSSL's defaults (wrk's TLS library and "
                   f"settings): {r['secure.tls_openssl']}; berth's generated server "
                   f"certificate: {r['secure.cert_key']}.")
        if "ref_https.tls_curl" in r:
            out.append(f"- The HTTPS reference (`openssl s_server -WWW`, same certificate): "
                       f"curl negotiated {r['ref_https.tls_curl']}; its download used "
                       f"{m('ref_https', 'client_download'):.2f} s of curl's CPU per GiB "
                       f"({busy('ref_https', 'download'):.0%} of one core), against "
                       f"{m('ref_http', 'client_download'):.2f} s over plain HTTP.")
        out.append(f"- Token: {tok:,} characters (RS256; its header carries the signing "
                   f"certificate chain, `x5c`, for Docker Distribution), so every "
                   f"authenticated request carries a {tok + len('Authorization: Bearer '):,}-byte "
                   f"`Authorization` header.")
        out.append("")

    srows = []
    for label, key, digits in (("Monolithic push (MiB/s)", "mono", 1),
                               ("Download (MiB/s)", "download", 1),
                               ("Manifest GET (requests/s)", "get", 1),
                               ("Push: server CPU (s per GiB)", "cpu_mono", 2),
                               ("Push: curl's CPU (s per GiB)", "client_mono", 2),
                               ("Download: server CPU (s per GiB)", "cpu_download", 2),
                               ("Download: curl's CPU (s per GiB)", "client_download", 2),
                               ("Manifest GET: server CPU (µs per request)", "cpu_get_us", 1),
                               ("Manifest GET: wrk's CPU (µs per request)", "client_get_us", 1)):
        srows.append([label] + [samples(r, f"{c}.{key}", digits) for c in cfgs])
    out.append(table(["Every run"] + [AUTH_NAMES[c] for c in cfgs], srows))
    if "ref_http.download" in r:
        out.append("")
        out.append(table(["Every run, download references", "MiB/s", "curl's CPU (s per GiB)"], [
            [f"plain HTTP, `sendfile(2)` ({'bench.py serve-file'})", samples(r, "ref_http.download"),
             samples(r, "ref_http.client_download", 2)],
            ["HTTPS, `openssl s_server -WWW`", samples(r, "ref_https.download"),
             samples(r, "ref_https.client_download", 2)],
        ]))
    return "\n".join(out)


def _section(text, begin):
    """(start, end) of the "## " section of TEXT that holds the marker BEGIN:
    from its heading to the next "## " heading or the end of TEXT."""
    start = text.rfind("\n## ", 0, text.index(begin)) + 1
    nxt = text.find("\n## ", text.index(begin))
    return start, (len(text) if nxt < 0 else nxt + 1)


def splice(doc, name, content, template=None):
    """DOC with CONTENT between NAME's markers. With TEMPLATE, the section
    holding the markers is first replaced by the template's (or added before
    "## Token service", or at the end, when DOC has none), so that its fixed
    text follows the template."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if template is not None:
        if begin not in template:
            raise SystemExit(f"report.py: no {begin} marker in the template")
        ts, te = _section(template, begin)
        section = template[ts:te].rstrip("\n") + "\n\n"
        if begin in doc:
            ds, de = _section(doc, begin)
            if de == len(doc):
                section = section.rstrip("\n") + "\n"
            doc = doc[:ds] + section + doc[de:]
        else:
            at = doc.find("## Token service")
            doc = (doc.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" if at < 0
                   else doc[:at] + section + doc[at:])
    elif begin not in doc:
        raise SystemExit(f"report.py: no {begin} marker")
    return re.sub(re.escape(begin) + ".*?" + re.escape(end),
                  lambda _: f"{begin}\n{content}\n{end}", doc, flags=re.S)


def carry_over(text, old_path):
    """The marked sections of the current document, kept in the new one."""
    try:
        old = open(old_path).read()
    except OSError:
        return text
    for name in MARKED:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        found = re.search(re.escape(begin) + "\n(.*?)\n" + re.escape(end), old, flags=re.S)
        if found and begin in text:
            text = splice(text, name, found.group(1))
    return text


def main():
    if sys.argv[1] == "--auth":
        section = auth_section(load(sys.argv[2]))
        doc = splice(open(sys.argv[4]).read(), "auth-bench", section, open(sys.argv[3]).read())
        with open(sys.argv[4] + ".tmp", "w") as f:
            f.write(doc)
        import os
        os.replace(sys.argv[4] + ".tmp", sys.argv[4])
        return
    if sys.argv[1] == "--auth-table":
        print(auth_section(load(sys.argv[2])))
        return
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
    if len(sys.argv) > 3:
        text = carry_over(text, sys.argv[3])
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
