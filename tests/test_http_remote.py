"""The HTTP tier against a real nginx (DAV PUT/DELETE) and against servers that misbehave on
purpose (silent, slow, endless, huge, wrong status, closing kept-alive connections); chains of
remotes (Redis + HTTP). The tests shared with Redis (hit, miss, forged and foreign-key entries,
server down, oversized value) run over both tiers in test_cache.py."""
import base64
import socket
import threading
import time
import warnings

import pytest

from kernbin.cache import Cache, LocalStore
from kernbin.cache import remote as remote_mod
from kernbin.cache.http import HttpStore
from kernbin.errors import KernbinWarning
from kernbin.cache.remote import (FAILED, OK, SKIPPED, RejectedEntry, RemoteUnavailableWarning, check_url,
                                  open_remote)

from remote_servers import HMAC_KEY, REDIS_PREFIX, nginx_server, redis_server  # noqa: F401 (fixtures)
from test_cache import synthetic

# -- against nginx -----------------------------------------------------------------------


def test_get_put_delete_round_trip(nginx_server):
    url, _, www = nginx_server
    store = HttpStore(url, HMAC_KEY)
    key, nb = synthetic("rt")
    data = nb.without_ir().to_bytes()
    assert store.get(key) == (None, OK)                          # 404: a miss, not a failure
    assert store.put(key, data) == OK
    assert (www / key).read_bytes() == store.wrap(key, data)     # URL = prefix/<key>, the signed value
    value, status = store.get(key)
    assert status == OK and store.unwrap(key, value) == data
    assert store.put(key, data) == OK                            # overwrite
    assert store.delete(key) == OK and not (www / key).exists()
    assert store.delete(key) == OK                               # already gone: fine
    assert not store.supports_leases and store.acquire_lease(key, 5).status == SKIPPED


def test_http_only_cache_builds_once_per_host_without_leases(tmp_path, nginx_server):
    url, _, _ = nginx_server
    a = Cache(LocalStore(str(tmp_path / "a")), HttpStore(url, HMAC_KEY))
    b = Cache(LocalStore(str(tmp_path / "b")), HttpStore(url, HMAC_KEY))
    assert a.lease_store is None                                 # HTTP has no leases: no fleet single flight
    key, nb = synthetic("plain")
    assert a.get_or_build(key, lambda: nb) == (nb, False)
    assert b.get_or_build(key, lambda: pytest.fail("b must not build")) == (nb, True)
    assert b.stats()["remote_hits"] == 1 and b.stats()["fleet_waits"] == 0


def test_connections_are_kept_alive_and_per_thread(nginx_server):
    url, _, _ = nginx_server
    store = HttpStore(url, HMAC_KEY)
    key, nb = synthetic("alive")
    store.put(key, nb.without_ir().to_bytes())
    store.get(key)
    sock = store._local.conn.sock.sock
    for _ in range(20):
        assert store.get(key)[1] == OK
    assert store._local.conn.sock.sock is sock                   # one connection for all of them
    other = []
    t = threading.Thread(target=lambda: other.append((store.get(key)[1], store._local.conn.sock.sock)))
    t.start()
    t.join()
    assert other[0][0] == OK and other[0][1] is not sock


def _self_signed(directory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kernbin test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_verifies_the_server(tmp_path):
    import ssl
    from remote_servers import _stop, start_nginx
    cert, key = _self_signed(tmp_path)
    url, proc, www = start_nginx(tmp_path / "nginx", str(cert), str(key))
    try:
        trusted = HttpStore(url, HMAC_KEY, ssl_context=ssl.create_default_context(cafile=str(cert)))
        k, nb = synthetic("tls")
        assert trusted.put(k, nb.without_ir().to_bytes()) == OK and (www / k).exists()
        value, status = trusted.get(k)
        assert status == OK and trusted.unwrap(k, value) == nb.without_ir().to_bytes()
        default = HttpStore(url, HMAC_KEY)                            # the system CAs: not this certificate
        result, _, warned = _quiet_get(default, k)
        assert result == (None, FAILED)
        assert len(warned) == 1 and isinstance(warned[0].error, ssl.SSLCertVerificationError)
    finally:
        _stop(proc)


# -- servers that misbehave --------------------------------------------------------------


def _read_request(conn) -> tuple[str, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return "", {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", 0))
    while len(body) < n:
        body += conn.recv(65536)
    return lines[0], headers, body


class FakeServer:
    """A loopback server that answers each request with ``handler(conn, request_line, headers, body)``;
    the handler returns True to keep the connection for another request."""

    def __init__(self, handler):
        self.handler, self.requests, self.connections = handler, [], 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/cache"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            while True:
                line, headers, body = _read_request(conn)
                if not line:
                    return
                self.requests.append((line, headers))
                if not self.handler(conn, line, headers, body):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def fake():
    servers = []

    def make(handler):
        servers.append(FakeServer(handler))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def _answer(conn, status: str, body: bytes = b"", extra: str = "") -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


def _quiet_get(store, key):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        try:
            result = store.get(key)
        except RejectedEntry as e:
            result = e
        return result, time.monotonic() - t0, [w.message for w in caught
                                               if issubclass(w.category, KernbinWarning)]


def test_a_silent_server_costs_one_bounded_wait_then_rests(fake):
    server = fake(lambda conn, *_: time.sleep(30))
    store = HttpStore(server.url, HMAC_KEY, timeout=0.5)
    key, _ = synthetic("silent")
    result, elapsed, warned = _quiet_get(store, key)
    assert result == (None, FAILED) and 0.4 < elapsed < 1.5
    assert [type(w) for w in warned] == [RemoteUnavailableWarning] and warned[0].url == server.url
    result, elapsed, warned = _quiet_get(store, key)
    assert result == (None, SKIPPED) and elapsed < 0.05 and warned == []   # resting: not tried, no warning


def test_a_dribbling_server_is_cut_off_at_the_deadline(fake):
    def dribble(conn, *_):
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(200):                          # a header byte every 50 ms: each recv is quick
            conn.sendall(b"X")
            time.sleep(0.05)
    store = HttpStore(fake(dribble).url, HMAC_KEY, timeout=0.6)
    result, elapsed, _ = _quiet_get(store, synthetic("slow")[0])
    assert result == (None, FAILED) and elapsed < 1.2


def test_an_endless_body_is_refused_at_the_bound(fake):
    def endless(conn, *_):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"K" * 0x10000 + b"\r\n"
        while True:
            conn.sendall(chunk)
    store = HttpStore(fake(endless).url, HMAC_KEY, max_entry_size=1 << 20)
    result, elapsed, _ = _quiet_get(store, synthetic("endless")[0])
    assert isinstance(result, RejectedEntry) and result.rule == "oversized" and elapsed < 2


def test_a_huge_content_length_is_refused_unread(fake):
    def huge(conn, *_):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + b"K" * 1000)
        time.sleep(5)
    store = HttpStore(fake(huge).url, HMAC_KEY, max_entry_size=1 << 20)
    result, elapsed, _ = _quiet_get(store, synthetic("huge")[0])
    assert isinstance(result, RejectedEntry) and result.rule == "oversized" and elapsed < 0.5


@pytest.mark.parametrize("answer", ["HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                                    "HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\n\r\n",
                                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                                    "garbage\r\n\r\n", ""])
def test_a_wrong_answer_is_a_failure_with_one_warning(fake, answer):
    server = fake(lambda conn, *_: conn.sendall(answer.encode()))
    store = HttpStore(server.url, HMAC_KEY)
    key, nb = synthetic("wrong")
    result, _, warned = _quiet_get(store, key)
    assert result == (None, FAILED)
    assert len(warned) == 1 and isinstance(warned[0], RemoteUnavailableWarning)
    assert store.put(key, nb.without_ir().to_bytes()) == SKIPPED        # resting
    assert len(server.requests) == 1


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once(fake):
    key, nb = synthetic("reconnect")
    store = HttpStore("http://127.0.0.1:1/cache", HMAC_KEY)          # only for wrap()
    value = store.wrap(key, nb.without_ir().to_bytes())

    def close_after_each(conn, *_):
        _answer(conn, "200 OK", value)                # no "Connection: close", and then closes anyway
        return False
    server = fake(close_after_each)
    store = HttpStore(server.url, HMAC_KEY)
    for _ in range(3):
        got, status = store.get(key)
        assert status == OK and store.unwrap(key, got) == nb.without_ir().to_bytes()
        time.sleep(0.05)
    assert server.connections == 3 and store._down_until == 0.0


def test_basic_auth_from_the_url_and_the_password_never_shown(fake):
    server = fake(lambda conn, *_: _answer(conn, "404 Not Found") or True)
    url = server.url.replace("http://", "http://fleet:s3cr%40t@")
    store = open_remote(url, HMAC_KEY)
    assert store.get(synthetic("auth")[0]) == (None, OK)
    line, headers = server.requests[0]
    assert line.startswith("GET /cache/") and len(line.split()[1]) == len("/cache/") + 64
    assert base64.b64decode(headers["authorization"].split()[1]) == b"fleet:s3cr@t"
    assert "s3cr" not in store.url and store.url.startswith("http://fleet:***@")


def test_check_url_accepts_http_and_refuses_what_it_cannot_use():
    for url in ("http://cache:8080/kernbin", "https://cache.example/a/b", "http://[::1]:80/", "redis://h:1/0",
                "http://cache.example./x", "http://b\u00fccher.example/x", "redis://[fe80::1%25eth0]:1/0"):
        check_url(url)
    for url in ("http://", "http:///path", "https://h/x?query=1", "https://h/x#frag", "ftp://h/x",
                "http://h:notaport/x", "http://a..b/cache", "http://" + "a" * 64 + ".example/cache",
                "https://.a/x", "redis://a..b:6379/0", "rediss://" + "b" * 64 + ":6379/0"):
        with pytest.raises(remote_mod.RemoteConfigError) as e:
            check_url(url)
        assert e.value.rule == "url"


@pytest.mark.parametrize("url", ["http://a..b/cache", "http://" + "a" * 64 + ".example/cache", "redis://a..b:6379/0"])
def test_a_host_that_is_not_a_valid_idna_name_disables_the_tier_once(tmp_path, monkeypatch, url):
    """Such a host used to pass the check and then fail every call with UnicodeError (an exception
    out of get and get_or_build): it is refused when the cache is configured, local only."""
    monkeypatch.setattr(remote_mod, "_disabled_warned", set())
    monkeypatch.setenv("KERNBIN_REMOTE", url)
    monkeypatch.setenv("KERNBIN_CACHE_HMAC_KEY", HMAC_KEY.decode())
    with pytest.warns(remote_mod.RemoteDisabledWarning) as caught:
        cache = Cache.from_env(str(tmp_path))
    assert [w.message.rule for w in caught] == ["url"] and cache.remotes == ()
    key, nb = synthetic("idna")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # no further warning, no exception
        assert cache.get(key) is None
        assert cache.get_or_build(key, lambda: nb) == (nb, False)


def test_unicode_and_value_errors_of_a_call_are_failures(fake):
    """Defence in depth: an error the resolver or a client raises from a name or an answer it cannot
    encode (UnicodeError, ValueError) is a failed call, never an exception."""
    store = HttpStore(fake(lambda conn, *_: None).url, HMAC_KEY)
    for error in (UnicodeError("label empty or too long"), ValueError("bad")):
        store._down_until = 0.0

        def boom(*_, e=error):
            raise e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert store._call(boom) == (None, FAILED)


def _big_answers(conn, line, headers, body):
    """PUT -> 201 and GET -> 404, each with a 100 KiB HTML body; DELETE -> 500 with one."""
    page = b"<html>" + b"x" * (100 << 10) + b"</html>"
    method = line.split()[0]
    status = {"PUT": "201 Created", "GET": "404 Not Found"}.get(method, "500 Internal Server Error")
    try:
        _answer(conn, status, page)
    except OSError:                                       # the client dropped the connection unread
        return False
    return True


def test_a_long_body_on_a_put_or_a_404_is_not_an_oversized_entry(tmp_path, fake):
    """Only a value (GET 200) can be "oversized": a 201 to a PUT or a 404 page over the 64 KiB drain
    limit is read no further (the connection is dropped) and means what its status says. It used to
    raise RejectedEntry out of Cache.put and get_or_build."""
    server = fake(_big_answers)
    store = HttpStore(server.url, HMAC_KEY)
    key, nb = synthetic("bigbody")
    result, _, warned = _quiet_get(store, key)
    assert result == (None, OK) and warned == []               # a miss
    assert store.put(key, nb.without_ir().to_bytes()) == OK
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.delete(key) == FAILED                     # a 500 stays a failure, long body or not
    assert [type(w.message) for w in caught] == [RemoteUnavailableWarning]
    cache = Cache(LocalStore(str(tmp_path / "c")), HttpStore(server.url, HMAC_KEY))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_or_build(key, lambda: nb) == (nb, False)
    st = cache.stats()
    assert (st["rejected"], st["remote_errors"]) == (0, 0)
    assert server.connections >= 4                              # each long body dropped its connection


def test_put_and_delete_never_raise_rejected_entry(fake):
    """Defence in depth: a tier whose write raises RejectedEntry reports a failed call."""
    class Refusing(HttpStore):
        def _put(self, key, value):
            raise RejectedEntry("oversized", "refused")
        _delete = _put
    store = Refusing(fake(lambda conn, *_: None).url, HMAC_KEY)
    key, nb = synthetic("refusing")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.put(key, nb.without_ir().to_bytes()) == FAILED
        assert store.delete(key) == SKIPPED                    # resting after the failure
    assert [type(w.message) for w in caught] == [RemoteUnavailableWarning]


# -- chains of remotes -------------------------------------------------------------------


def test_chain_reads_in_order_writes_all_and_leases_on_redis(tmp_path, redis_server, nginx_server, monkeypatch):
    rurl, _, client = redis_server
    hurl, _, www = nginx_server
    monkeypatch.setenv("KERNBIN_REMOTE", f"{rurl}  {hurl}\n")
    monkeypatch.setenv("KERNBIN_CACHE_HMAC_KEY", HMAC_KEY.decode())
    a = Cache.from_env(str(tmp_path / "a"))
    assert [r.url for r in a.remotes] == [rurl, hurl] and a.lease_store is a.remotes[0]
    assert a.stats()["remote"] == f"{rurl} {hurl}"
    key, nb = synthetic("chain")
    assert a.get_or_build(key, lambda: nb) == (nb, False)
    assert client.exists(REDIS_PREFIX + key) and (www / key).exists()          # written to both
    client.delete(REDIS_PREFIX + key)                                           # Redis evicted it
    b = Cache.from_env(str(tmp_path / "b"))
    assert b.get(key) == nb                                                     # read through to HTTP
    assert client.exists(REDIS_PREFIX + key)                                    # and copied back to Redis
    (www / key).unlink()
    c = Cache.from_env(str(tmp_path / "c"))
    assert c.get(key) == nb                                                     # Redis first
    assert not (www / key).exists()                                             # a hit in the first tier stops there


def test_chain_with_one_bad_url_keeps_the_others(tmp_path, nginx_server, monkeypatch):
    hurl, _, _ = nginx_server
    monkeypatch.setattr(remote_mod, "_disabled_warned", set())
    monkeypatch.setenv("KERNBIN_REMOTE", f"redis://host:notaport {hurl}")
    monkeypatch.setenv("KERNBIN_CACHE_HMAC_KEY", HMAC_KEY.decode())
    with pytest.warns(remote_mod.RemoteDisabledWarning) as caught:
        cache = Cache.from_env(str(tmp_path))
    assert [w.message.rule for w in caught] == ["url"]
    assert [r.url for r in cache.remotes] == [hurl]


def test_chain_with_redis_down_reads_http_and_builds_without_a_lease(tmp_path, redis_server, nginx_server):
    rurl, proc, _ = redis_server
    hurl, _, www = nginx_server
    writer = Cache(LocalStore(str(tmp_path / "w")), [HttpStore(hurl, HMAC_KEY)])
    key, nb = synthetic("redis-down")
    writer.put(key, nb)
    proc.kill()
    proc.wait()
    from kernbin.cache.redis import RedisStore
    cache = Cache(LocalStore(str(tmp_path / "r")), [RedisStore(rurl, HMAC_KEY), HttpStore(hurl, HMAC_KEY)])
    with pytest.warns(RemoteUnavailableWarning):
        assert cache.get(key) == nb                                 # Redis fails, HTTP serves
        key2, nb2 = synthetic("redis-down-2")
        t0 = time.monotonic()
        assert cache.get_or_build(key2, lambda: nb2) == (nb2, False)
    assert time.monotonic() - t0 < 1 and (www / key2).exists()
    st = cache.stats()
    assert (st["remote_hits"], st["remote_errors"], st["fleet_waits"]) == (1, 1, 0)


def test_random_garbage_answers_never_crash_or_hang(fake):
    """Answers spliced from pieces of valid and invalid HTTP: each read is a miss, a value, a
    rejected value or a failed call; never an exception, never longer than the deadline."""
    import random
    rng = random.Random(7)
    key, nb = synthetic("garbage")
    good = HttpStore("http://127.0.0.1:1/c", HMAC_KEY).wrap(key, nb.without_ir().to_bytes())
    parts = [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 404 Not Found\r\n", b"Content-Length: 5\r\n",
             b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n", b"Transfer-Encoding: chunked\r\n",
             b"\r\n", b"zz\r\n", b"5\r\nabcde\r\n", b"0\r\n\r\n", b"Connection: close\r\n", good[:100], good,
             b"\xff\xfe", b"X-A: " + b"a" * 70000 + b"\r\n", b"HTTP/9 999 ?\r\n"]
    seen = set()
    for _ in range(60):
        answer = b"".join(rng.choice(parts) for _ in range(rng.randint(1, 8)))
        store = HttpStore(fake(lambda conn, *_, a=answer: conn.sendall(a)).url, HMAC_KEY, timeout=0.3)
        result, elapsed, _ = _quiet_get(store, key)
        assert isinstance(result, RejectedEntry) or result[1] in (OK, FAILED), result
        assert elapsed < 1.0
        seen.add(type(result).__name__ if isinstance(result, RejectedEntry) else result[1])
        store.close()
    assert FAILED in seen
