#!/usr/bin/env python3
"""Memory a remote cache read takes: one large value through the HTTP tier (nginx) and the Redis tier
(redis-server), and an endless chunked HTTP body against the size bound.

    python benchmarks/remote_memory.py [--mib 100] [--json]

A private redis-server and nginx are started on free ports (both must be installed). The value (a
signed remote entry around ``--mib`` MiB of random bytes) is stored behind the tier's back; then, in a
fresh process for each figure, ``store.get(key)`` and ``store.unwrap(key, value)`` run once, and
the process reports the peak of Python allocations during them (tracemalloc) and, in another fresh
process without tracemalloc, the growth of its peak resident set (``VmHWM``, Linux) over a warmed-up
baseline. The endless body: a loopback server sends chunks for ever, the store's ``max_entry_size`` is
``--mib`` MiB; the read must stop there (RejectedEntry "oversized"). Ratios are peak / value size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HMAC = b"bench-secret"
KEY = "ab" * 32

CHILD = r"""
import gc, json, sys
from kernbin.cache.remote import open_remote


def hwm():
    # the peak resident set of this process image (VmHWM; ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


url, mode, bound = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = {"timeout": 60} if url.startswith("http") else {"deadline": 60}
store = open_remote(url, b"bench-secret", max_entry_size=bound, **kw)
key = "ab" * 32
store.get("cd" * 32)                                   # connect (and warm up) on a missing key
gc.collect()
out = {}
if mode == "tracemalloc":
    import tracemalloc
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
try:
    base_rss = hwm()
    value, status = store.get(key)
    n = len(store.unwrap(key, value))
    out.update(status=status, bytes=n)
except Exception as e:                                   # the endless body: refused at the bound
    out.update(error=type(e).__name__, rule=getattr(e, "rule", None))
if mode == "tracemalloc":
    out["peak"] = tracemalloc.get_traced_memory()[1] - base
else:
    out["peak"] = hwm() - base_rss
print(json.dumps(out))
"""

NGINX_CONF = """{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args[0]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"server did not listen: {proc.args[0]}")


def start_redis(d: str):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return f"redis://127.0.0.1:{port}/0", proc


def start_nginx(d: str):
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    os.makedirs(os.path.join(d, "www", "cache"))
    port = free_port()
    user = ""
    if os.geteuid() == 0:
        import grp
        import pwd
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(user=user, d=d, port=port))
    proc = subprocess.Popen([exe, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return f"http://127.0.0.1:{port}/cache", proc, os.path.join(d, "www", "cache")


class Endless:
    """HTTP 200 with a chunked body that never ends."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/cache"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        chunk = b"%x\r\n" % (1 << 16) + b"k" * (1 << 16) + b"\r\n"
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn, chunk), daemon=True).start()

    @staticmethod
    def _one(conn, chunk):
        with conn:
            try:
                req = conn.recv(65536)
                if b"GET /cache/" + b"cd" * 32 in req:         # the warm-up: a miss
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    req = conn.recv(65536)
                if not req:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while True:
                    conn.sendall(chunk)
            except OSError:
                pass


def measure(url: str, bound: int, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", CHILD, url, mode, str(bound)], capture_output=True, text=True,
                       env=env, timeout=300)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=100, help="value size in MiB (default 100)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = args.mib << 20
    sys.path.insert(0, ROOT)
    from kernbin.cache.remote import RemoteStore
    wrap = RemoteStore("http://127.0.0.1:1/x", HMAC).wrap
    value = wrap(KEY, os.urandom(size))
    bound = len(value) + (1 << 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernbin-remote-memory-") as d:
        rurl, rproc = start_redis(os.path.join(d))
        hurl, hproc, www = start_nginx(os.path.join(d, "nginx"))
        endless = Endless()
        try:
            import redis
            redis.Redis.from_url(rurl).set("kernbin:v1:" + KEY, value)
            with open(os.path.join(www, KEY), "wb") as f:
                f.write(value)
            del value
            for tier, url, b in (("http", hurl, bound), ("redis", rurl, bound), ("http endless chunked", endless.url,
                                                                               size)):
                row = {"tier": tier, "value_mib": args.mib}
                for mode in ("tracemalloc", "rss"):
                    got = measure(url, b, mode)
                    row[f"{mode}_peak_mib"] = round(got["peak"] / 2**20, 1)
                    row[f"{mode}_ratio"] = round(got["peak"] / size, 2)
                    row["outcome"] = got.get("status") or f"{got.get('error')} ({got.get('rule')})"
                rows.append(row)
        finally:
            for proc in (rproc, hproc):
                proc.terminate()
                proc.wait(timeout=10)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['tier']:22} {r['value_mib']} MiB: peak {r['tracemalloc_peak_mib']} MiB "
                  f"({r['tracemalloc_ratio']}x) by tracemalloc, {r['rss_peak_mib']} MiB ({r['rss_ratio']}x) "
                  f"resident; {r['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
