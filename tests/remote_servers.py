"""Real servers for the remote cache tiers, started by fixtures on free loopback ports:
``redis_server`` (Debian's redis-server) and ``nginx_server`` (Debian's nginx, its DAV module
taking PUT and DELETE); ``remote_server`` runs a test once over each, as a :class:`Served`.
Each fixture skips, saying why, when its server is not installed."""
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

__all__ = ["free_port", "redis_server", "nginx_server", "remote_server", "Served", "HMAC_KEY", "LoopbackServer"]

HMAC_KEY = b"fleet-secret"
REDIS_PREFIX = "kernbin:v1:"


class LoopbackServer:
    """A hostile or broken server for a remote tier's tests: listens on a free loopback port (``url``,
    ``redis://...``) and hands each connection, in its own thread, to :meth:`_one`."""

    scheme = "redis"

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"{self.scheme}://127.0.0.1:{self.sock.getsockname()[1]}/0"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        raise NotImplementedError

    def close(self):
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str, *fallbacks: str):
    return shutil.which(name) or next((p for p in fallbacks if os.path.exists(p)), None)


def start_redis(directory):
    """``(url, process, client)`` of a private redis-server in ``directory``; skips when not installed."""
    exe = _exe("redis-server", "/usr/bin/redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--enable-debug-command", "local", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    return f"redis://127.0.0.1:{port}/0", proc, client


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


@pytest.fixture
def redis_server(tmp_path):
    url, proc, client = start_redis(tmp_path)
    yield url, proc, client
    _stop(proc)


_NGINX_CONF = """{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    keepalive_timeout 10s;
    server {{
        listen 127.0.0.1:{port}{tls};
        {certs}
        root {d}/www;
        location /cache/ {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def start_nginx(directory, cert: str | None = None, key: str | None = None):
    """``(url, process, www)``: nginx serving ``directory/www``, with PUT and DELETE under ``/cache/``
    (the URL points there); with ``cert`` and ``key`` (PEM files) over TLS. Skips when nginx is not
    installed."""
    exe = _exe("nginx", "/usr/sbin/nginx")
    if exe is None:
        pytest.skip("nginx not installed (apt-get install nginx)")
    d = directory
    (d / "www" / "cache").mkdir(parents=True)
    port = free_port()
    user = ""
    if os.geteuid() == 0:                       # workers would switch to "nobody": keep them this user
        import grp
        import pwd
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    tls, certs = "", ""
    if cert:
        tls, certs = " ssl", f"ssl_certificate {cert}; ssl_certificate_key {key};"
    (d / "nginx.conf").write_text(_NGINX_CONF.format(user=user, d=d, port=port, tls=tls, certs=certs))
    proc = subprocess.Popen([exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("nginx did not start listening")
    return f"{'https' if cert else 'http'}://127.0.0.1:{port}/cache", proc, d / "www" / "cache"


@pytest.fixture
def nginx_server(tmp_path_factory):
    url, proc, www = start_nginx(tmp_path_factory.mktemp("nginx"))
    yield url, proc, www
    _stop(proc)


class Served:
    """A running remote server as the tests see it: its URL, a store for it, and raw access to
    the values behind kernbin's back (to forge, corrupt or inspect them)."""

    def __init__(self, kind: str, url: str, proc, raw):
        self.kind, self.url, self.proc, self._raw = kind, url, proc, raw

    def store(self, hmac_key: bytes = HMAC_KEY, **kw):
        from kernbin.cache.remote import open_remote
        return open_remote(self.url, hmac_key, retry_after=60, **kw)

    def raw_get(self, key: str) -> bytes | None:
        if self.kind == "redis":
            v = self._raw.get(REDIS_PREFIX + key)
            return None if v is None else bytes(v)
        p = self._raw / key
        return p.read_bytes() if p.exists() else None

    def raw_set(self, key: str, value: bytes) -> None:
        if self.kind == "redis":
            self._raw.set(REDIS_PREFIX + key, value)
        else:
            (self._raw / key).write_bytes(value)

    def keys(self) -> list[str]:
        """The cache keys that have a value."""
        if self.kind == "redis":
            return sorted(k.decode()[len(REDIS_PREFIX):] for k in self._raw.keys(REDIS_PREFIX + "*")
                          if not k.endswith(b":lease"))
        return sorted(p.name for p in self._raw.iterdir())

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(params=["redis", "http"])
def remote_server(request) -> Served:
    """The test once against Redis, once against nginx (HTTP PUT/GET/DELETE)."""
    if request.param == "redis":
        url, proc, client = request.getfixturevalue("redis_server")
        return Served("redis", url, proc, client)
    url, proc, www = request.getfixturevalue("nginx_server")
    return Served("http", url, proc, www)
