#!/usr/bin/env python3
"""Helpers for bench/run (Python 3 standard library only).

Subcommands:
  gen FILE BYTES            write BYTES random bytes to FILE, print its sha256 digest
  port PID                  print the TCP port PID listens on (from /proc)
  serve-file FILE PORTFILE  static HTTP server for one file at /sendfile (zero-copy)
                            and /copy (through a user-space buffer); writes its
                            port to PORTFILE, serves until killed
  chunked BASE REPO FILE DIGEST CHUNK
                            chunked upload over one keep-alive connection:
                            POST, PATCHes of CHUNK bytes with Content-Range,
                            PUT ?digest=; prints the seconds it took
  push-image BASE REPO TAG  push a small image (config, layer, OCI manifest)
                            and print the manifest's digest
  wrk-parse FILE            print "req/s p50_ms p99_ms errors requests" from wrk --latency output
  ab-parse OUT CSV          the same from ab's output and its -e percentile CSV
  median V...               print the median

chunked and push-image speak HTTPS when BASE is https:// (trusting the CA in
$BENCH_CACERT) and send "Authorization: Bearer $BENCH_TOKEN" when that is set.
"""

import hashlib
import http.client
import http.server
import json
import mmap
import os
import re
import socket
import socketserver
import ssl
import statistics
import sys
import time
import urllib.parse


def die(msg):
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(1)


def gen(path, nbytes):
    """Random content from OpenSSL's generator (faster than os.urandom)."""
    import subprocess
    subprocess.run(["openssl", "rand", "-out", path, str(int(nbytes))], check=True)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 << 20):
            h.update(b)
    if os.path.getsize(path) != int(nbytes):
        die(f"{path}: wrong size")
    print(f"sha256:{h.hexdigest()}")


def port(pid):
    """The port of the first listening TCP socket owned by PID."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address rem_address st ... inode is field 9; st 0A = LISTEN
            if f[3] == "0A" and f[9] in inodes:
                print(int(f[1].rsplit(":", 1)[1], 16))
                return
    die(f"process {pid} listens on no TCP port (yet)")


def serve_file(path, portfile):
    """GET /sendfile: the file sent with sendfile(2) (no copy in user space);
    GET /copy: read into one reused 256 KiB buffer and sent, as a server that
    copies through user space would."""
    size = os.path.getsize(path)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path not in ("/sendfile", "/copy"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            with open(path, "rb", buffering=0) as f:
                if self.path == "/sendfile":
                    self.connection.sendfile(f)
                    return
                buf = bytearray(256 << 10)
                view = memoryview(buf)
                while n := f.readinto(buf):
                    self.connection.sendall(view[:n])

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, portfile)
    srv.serve_forever()


def _tls_context():
    """Trusts only $BENCH_CACERT (berth's generated CA); http.client speaks HTTP/1.1."""
    cafile = os.environ.get("BENCH_CACERT")
    if not cafile:
        die("an https:// URL needs BENCH_CACERT (the CA certificate to trust)")
    return ssl.create_default_context(cafile=cafile)


def _conn(base):
    u = urllib.parse.urlsplit(base)
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=300,
                                           context=_tls_context())
    return http.client.HTTPConnection(u.hostname, u.port, timeout=300)


def _path(loc, base):
    """Path and query of a Location header (absolute or relative)."""
    u = urllib.parse.urlsplit(urllib.parse.urljoin(base + "/", loc))
    return u.path + (("?" + u.query) if u.query else "")


def _req(conn, method, path, body=None, headers=None, expect=(200,)):
    headers = dict(headers or {})
    if os.environ.get("BENCH_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["BENCH_TOKEN"]
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status not in expect:
        die(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
    return r, data


def _with_digest(path, digest):
    return path + ("&" if "?" in path else "?") + "digest=" + urllib.parse.quote(digest)


def chunked(base, repo, path, digest, chunk):
    chunk = int(chunk)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    conn = _conn(base)
    t0 = time.perf_counter()
    r, _ = _req(conn, "POST", f"/v2/{repo}/blobs/uploads/",
                headers={"Content-Length": "0"}, expect=(202,))
    loc = _path(r.getheader("Location"), base)
    off = 0
    while off < size:
        n = min(chunk, size - off)
        r, _ = _req(conn, "PATCH", loc, body=view[off:off + n], headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(n),
            "Content-Range": f"{off}-{off + n - 1}",
        }, expect=(202,))
        loc = _path(r.getheader("Location"), base)
        off += n
    r, _ = _req(conn, "PUT", _with_digest(loc, digest),
                headers={"Content-Length": "0"}, expect=(201,))
    t1 = time.perf_counter()
    got = r.getheader("Docker-Content-Digest")
    if got != digest:
        die(f"chunked upload: server says digest {got}, expected {digest}")
    conn.close()
    view.release()
    mm.close()
    print(f"{t1 - t0:.6f}")


def _push_blob(conn, base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r, _ = _req(conn, "POST", f"/v2/{repo}/blobs/uploads/",
                headers={"Content-Length": "0"}, expect=(202,))
    loc = _path(r.getheader("Location"), base)
    _req(conn, "PUT", _with_digest(loc, digest), body=data, headers={
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(data)),
    }, expect=(201,))
    return digest


def push_image(base, repo, tag):
    conn = _conn(base)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }).encode()
    layer = os.urandom(64 << 10)  # stands in for a gzipped tar layer
    cd = _push_blob(conn, base, repo, config)
    ld = _push_blob(conn, base, repo, layer)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": ld, "size": len(layer)}],
    }, indent=3).encode()
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    ctype = "application/vnd.oci.image.manifest.v1+json"
    _req(conn, "PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, headers={
        "Content-Type": ctype, "Content-Length": str(len(manifest)),
    }, expect=(201,))
    # Check what the benchmark will ask for.
    for method in ("GET", "HEAD"):
        r, data = _req(conn, method, f"/v2/{repo}/manifests/{tag}",
                       headers={"Accept": ctype}, expect=(200,))
        if r.getheader("Docker-Content-Digest") != md:
            die(f"{method} manifest: digest {r.getheader('Docker-Content-Digest')}, expected {md}")
        if int(r.getheader("Content-Length", "-1")) != len(manifest):
            die(f"{method} manifest: Content-Length {r.getheader('Content-Length')}")
        if method == "GET" and data != manifest:
            die("GET manifest: body differs from what was pushed")
    conn.close()
    print(md)


def _ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def wrk_parse(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p50 and p99 and total):
        die(f"cannot parse wrk output {path}:\n{text}")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    print(f"{float(rps.group(1)):.1f} {_ms(*p50.groups()):.3f} {_ms(*p99.groups()):.3f} "
          f"{errors} {total.group(1)}")


def ab_parse(out_path, csv_path):
    text = open(out_path).read()
    rps = re.search(r"Requests per second:\s+([\d.]+)", text)
    total = re.search(r"Complete requests:\s+(\d+)", text)
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    if not (rps and total and failed):
        die(f"cannot parse ab output {out_path}:\n{text}")
    errors = int(failed.group(1))
    m = re.search(r"Non-2xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    pct = {}
    for line in open(csv_path).read().splitlines()[1:]:
        p, ms = line.split(",")
        pct[int(p)] = float(ms)
    if 50 not in pct or 99 not in pct:
        die(f"no percentiles in {csv_path}")
    print(f"{float(rps.group(1)):.1f} {pct[50]:.3f} {pct[99]:.3f} {errors} {total.group(1)}")


def median(*vals):
    print(f"{statistics.median(float(v) for v in vals):.6g}")


def main():
    cmds = {
        "gen": gen, "port": port, "serve-file": serve_file, "chunked": chunked,
        "push-image": push_image, "wrk-parse": wrk_parse, "ab-parse": ab_parse, "median": median,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        die(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
