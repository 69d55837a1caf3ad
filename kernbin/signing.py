"""Ed25519 signatures for every container-based format (``.knb`` files, bundles).

The container's BLAKE3 digests catch accidents (a flipped bit, a truncated copy) but not an
attacker, who can change a section and re-compute every digest. A signature says *who* made
the file: only the holder of the private key can produce one that a trusted public key accepts.
Spec: ``docs/signing.md``.

One scheme for all formats, kept out of them: the signature is one more container section,
named ``"signature"``, holding ``{"alg":"ed25519","key":"<64 hex>","sig":"<128 hex>"}``. It signs
:func:`message`, which binds the magic, the version, the ``meta`` JSON and the name, size and
digest of every *other* section in file order. The header digest covers the signature section's
digest and the section digests cover the bytes, so nothing is circular.

- :func:`generate_key`, :func:`load_private_key`, :func:`load_public_key`, :func:`key_id`: key files.
- :func:`sign`: container bytes in, the same container plus (or with a new) signature out.
- :func:`verify`: the key id that signed a parsed container, or :class:`SignatureError`.
- :func:`trusted_keys_from_env`: the public keys named by ``KERNBIN_TRUSTED_KEYS``.
- :func:`signature_of`: who signed, without checking the signature or trust (for ``inspect``).
"""

from __future__ import annotations

import os
import re
import struct
from typing import Collection, Iterable

import msgspec
from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._fs import FileRefused, atomic_write, read_regular_file
from .container import Container, pack
from .errors import KernbinError, SignatureError  # noqa: F401 - SignatureError re-exported

__all__ = ["SECTION", "ALG", "MESSAGE_PREFIX", "PUBLIC_KEY_PREFIX", "ENV_VAR", "SIGNATURE_RULES",
           "SignatureError", "KeyFileError", "generate_key", "load_private_key", "load_public_key",
           "public_key_text", "key_id", "message", "sign", "verify", "trusted_keys_from_env",
           "signature_of"]

SECTION = "signature"                       #: the section that holds the signature
ALG = "ed25519"                             #: the only algorithm this version knows
MESSAGE_PREFIX = b"kernbin-signature/1\0"   #: domain separation: these bytes sign nothing else
PUBLIC_KEY_PREFIX = "kernbin-ed25519"       #: first word of a public key line
ENV_VAR = "KERNBIN_TRUSTED_KEYS"            #: os.pathsep-separated .pub files or directories of them

#: every value ``SignatureError.rule`` can take
SIGNATURE_RULES = ("unsigned", "untrusted-key", "bad-signature", "malformed-signature")

_MAX_SIGNATURE = 1024                       # the JSON is 183 bytes; anything much longer is not ours
_MAX_KEY_FILE = 16 << 10                    # a PEM key or a .pub line, with room for a comment
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_NO_CAP = 0xFFFFFFFF                        # the layout's own limit on a header length (u32)


class KeyFileError(KernbinError):
    """A key file that cannot be written or used. ``path`` names it (None for key text given
    inline); ``rule`` is "exists" (refusing to overwrite), "missing", "unreadable" or "malformed"."""

    def __init__(self, path: str | None, rule: str, reason: str):
        self.path, self.rule, self.reason = path, rule, reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


# -- keys --------------------------------------------------------------------------------------
def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kid(raw: bytes) -> str:
    return blake3(raw).hexdigest()[:16]


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key for messages and ``inspect``: the first 16 hex
    digits of BLAKE3 of its raw 32 bytes."""
    return _kid(_raw(public))


def public_key_text(public: Ed25519PublicKey, comment: str | None = None) -> str:
    """The one-line form of a public key, as written to ``.pub`` files:
    ``kernbin-ed25519 <64 hex> [comment]`` (no newline)."""
    line = f"{PUBLIC_KEY_PREFIX} {_raw(public).hex()}"
    if comment:
        if "\n" in comment or "\r" in comment:
            raise ValueError("a key comment must be one line")
        line += f" {comment}"
    return line


def generate_key(path: str | os.PathLike, *, comment: str | None = None) -> tuple[str, str]:
    """Make a new Ed25519 key pair: the private key at ``path`` (PEM PKCS#8, unencrypted, mode
    0600) and the public key at ``path + ".pub"`` (one line, mode 0644, see
    :func:`public_key_text`). Each is published atomically. Refuses (:class:`KeyFileError`,
    rule "exists") if either file exists: a key is never replaced by accident.
    Returns (private path, public path)."""
    private_path = os.fspath(path)
    public_path = private_path + ".pub"
    for p in (private_path, public_path):
        if os.path.lexists(p):
            raise KeyFileError(p, "exists", "refusing to overwrite an existing key file")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(private_path, pem, mode=0o600)
    try:
        atomic_write(public_path, (public_key_text(key.public_key(), comment) + "\n").encode(), mode=0o644)
    except BaseException:
        try:
            os.unlink(private_path)       # no private key without its public half
        except OSError:
            pass
        raise
    return private_path, public_path


def _read_key_file(path: str, what: str) -> bytes:
    try:
        return read_regular_file(path, _MAX_KEY_FILE, what=what)
    except FileNotFoundError:
        raise KeyFileError(path, "missing", f"{what} does not exist") from None
    except FileRefused as e:
        raise KeyFileError(path, "unreadable", e.reason) from None
    except OSError as e:
        raise KeyFileError(path, "unreadable", f"cannot read {what}: {e.strerror or e}") from None


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The private key in a PEM PKCS#8 file written by :func:`generate_key` (unencrypted).
    :class:`KeyFileError` if it is missing, unreadable or not an Ed25519 private key."""
    path = os.fspath(path)
    data = _read_key_file(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:      # not PEM, encrypted, unsupported
        raise KeyFileError(path, "malformed", f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "malformed", f"not an Ed25519 key ({type(key).__name__})")
    return key


def _parse_public(text: str, path: str | None) -> Ed25519PublicKey:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    words = lines[0].split() if len(lines) == 1 else []
    if len(words) < 2 or words[0] != PUBLIC_KEY_PREFIX or not _HEX64.fullmatch(words[1]):
        raise KeyFileError(path, "malformed", f"a public key is one line '{PUBLIC_KEY_PREFIX} <64 lowercase "
                           f"hex digits> [comment]'")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(words[1]))


def load_public_key(path_or_text: str | os.PathLike) -> Ed25519PublicKey:
    """A public key from its one-line text (a string starting with ``kernbin-ed25519 ``, e.g.
    pasted from a ``.pub`` file) or from a file holding that line. :class:`KeyFileError` if the
    file is missing or unreadable, or the line is not a key."""
    if isinstance(path_or_text, str) and path_or_text.lstrip().startswith(PUBLIC_KEY_PREFIX + " "):
        return _parse_public(path_or_text, None)
    path = os.fspath(path_or_text)
    data = _read_key_file(path, "public key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(path, "malformed", "public key file is not UTF-8 text") from None
    return _parse_public(text, path)


def trusted_keys_from_env() -> list[Ed25519PublicKey]:
    """The public keys named by ``KERNBIN_TRUSTED_KEYS``: ``os.pathsep``-separated entries, each
    a ``.pub`` file or a directory whose ``*.pub`` files are all read (not recursively). Unset or
    empty gives no keys (so nothing signed is trusted). A missing or unreadable entry or file, or
    one that is not a key, raises :class:`KeyFileError` naming it: a trust list is never
    silently shortened. Duplicate keys are listed once."""
    value = os.environ.get(ENV_VAR, "")
    keys, seen = [], set()
    for entry in value.split(os.pathsep):
        if not entry:
            continue
        if os.path.isdir(entry):
            try:
                names = sorted(n for n in os.listdir(entry) if n.endswith(".pub"))
            except OSError as e:
                raise KeyFileError(entry, "unreadable", f"cannot list {ENV_VAR} directory: "
                                   f"{e.strerror or e}") from None
            files = [os.path.join(entry, n) for n in names]
        elif os.path.lexists(entry):
            files = [entry]
        else:
            raise KeyFileError(entry, "missing", f"{ENV_VAR} names a path that does not exist")
        for f in files:
            key = load_public_key(f)
            raw = _raw(key)
            if raw not in seen:
                seen.add(raw)
                keys.append(key)
    return keys


# -- the signed message --------------------------------------------------------------------------
def message(magic: bytes, version: int, meta_raw: bytes, sections: Iterable[tuple[str, int, bytes]]) -> bytes:
    """The bytes a signature signs: ``MESSAGE_PREFIX + magic (8) + u32 version + BLAKE3(meta_raw)
    + for each (name, size, 32-byte BLAKE3 digest) of every section but the signature, in file
    order: name UTF-8 + NUL + u64 size + digest``. Integers are little-endian. Unambiguous:
    section names cannot contain NUL and everything else has a fixed size."""
    parts = [MESSAGE_PREFIX, magic, _U32.pack(version), blake3(meta_raw).digest()]
    for name, size, digest in sections:
        parts += [name.encode("utf-8"), b"\0", _U64.pack(size), digest]
    return b"".join(parts)


def _message_of(c: Container, magic: bytes) -> bytes:
    """:func:`message` for a parsed container, from its (header-verified) section table: nothing
    is read. The signature binds these digests; each section's bytes are checked against its
    digest whenever they are read, so a lazily opened bundle verifies its signature without
    reading its blobs."""
    entries = [(name, c.size(name), c.digest(name)) for name in c.names if name != SECTION]
    return message(magic, c.version, c.meta_raw, entries)


class _Signature(msgspec.Struct, forbid_unknown_fields=True):
    alg: str
    key: str
    sig: str


_SIGNATURE = msgspec.json.Decoder(_Signature)


def _read_signature(c: Container) -> _Signature | None:
    """The signature section, strictly decoded, or None when there is none. Raises
    :class:`SignatureError` ("malformed-signature") for anything but the exact shape, and
    ContainerError ("section-digest") if the section's bytes fail their digest."""
    if SECTION not in c.names:
        return None
    if c.size(SECTION) > _MAX_SIGNATURE:
        raise SignatureError("malformed-signature", f"signature section of {c.size(SECTION)} bytes is "
                             f"larger than {_MAX_SIGNATURE}")
    data = c.section(SECTION)
    try:
        s = _SIGNATURE.decode(data)
    except (msgspec.DecodeError, RecursionError, ValueError) as e:
        raise SignatureError("malformed-signature", f"signature is not the expected JSON object: {e}") from None
    if s.alg != ALG:
        raise SignatureError("malformed-signature", f"unknown signature algorithm {s.alg!r} (this reader "
                             f"knows {ALG!r})")
    if not _HEX64.fullmatch(s.key):
        raise SignatureError("malformed-signature", "signature 'key' must be 64 lowercase hex digits")
    kid = _kid(bytes.fromhex(s.key))
    if not _HEX128.fullmatch(s.sig):
        raise SignatureError("malformed-signature", "signature 'sig' must be 128 lowercase hex digits",
                             key_id=kid)
    return s


def _check_magic(magic) -> None:
    if not isinstance(magic, bytes) or len(magic) != 8:
        raise ValueError(f"magic must be 8 bytes, got {magic!r}")


# -- sign / verify -----------------------------------------------------------------------------
def sign(data, private_key: Ed25519PrivateKey, *, magic: bytes, versions: Collection[int],
         max_header: int | None = None) -> bytes:
    """Sign container bytes ``data`` (``magic`` and ``versions`` as for :meth:`Container.parse`):
    the same magic, version, meta and sections (same order, same alignment) rebuilt with
    :func:`~kernbin.container.pack`, an existing signature section dropped and a new one
    appended last. Every section is verified first: a corrupted container is never signed
    (ContainerError). ``max_header`` caps the header read and written; by default there is
    none beyond the layout's own (u32), since the bytes are the caller's own: a format whose
    reader caps headers (a bundle manifest, ``.knb``) passes its cap to be told here, not at
    load time, that the signed header (about 150 bytes longer) no longer fits."""
    _check_magic(magic)
    max_header = _NO_CAP if max_header is None else max_header
    c = Container.parse(data, magic=magic, versions=versions, max_header=max_header)
    meta = c.meta
    sections = [(n, c.section(n)) for n in c.names if n != SECTION]
    entries = [(n, len(b), blake3(b).digest()) for n, b in sections]
    # pack() serialises meta independently of the sections: an empty container gives its exact bytes
    meta_raw = Container.parse(pack(magic, c.version, meta, [], max_header=max_header), magic=magic,
                               versions=(c.version,), max_header=max_header).meta_raw
    public = private_key.public_key()
    sig = private_key.sign(message(magic, c.version, meta_raw, entries))
    blob = msgspec.json.encode({"alg": ALG, "key": _raw(public).hex(), "sig": sig.hex()})
    out = pack(magic, c.version, meta, sections + [(SECTION, blob)], align=c.align, max_header=max_header)
    signed = Container.parse(out, magic=magic, versions=(c.version,), max_header=max_header)
    if signed.meta_raw != meta_raw:                   # would be a pack() change; never ship a bad signature
        raise KernbinError("internal error: meta was serialised differently while signing")
    return out


def verify(container: Container, trusted_keys: Iterable[Ed25519PublicKey], *, magic: bytes) -> str:
    """Check that ``container`` carries a valid signature by one of ``trusted_keys``; return
    that key's :func:`key_id`. ``magic`` is the one it was parsed with (the message binds it,
    so a signed ``.knb`` cannot pass as a bundle, and a parsed Container does not keep it).
    Raises :class:`SignatureError`: "unsigned" (no signature section), "malformed-signature",
    "untrusted-key" (a well-formed signature by a key not in the list: its signature is not
    even checked) or "bad-signature" (by a trusted key, but over other bytes). The signature
    covers every other section's recorded digest; their bytes are checked against those digests
    when they are read (ContainerError "section-digest"), so verifying reads no section."""
    _check_magic(magic)
    s = _read_signature(container)
    if s is None:
        raise SignatureError("unsigned", f"the container has no {SECTION!r} section")
    raw = bytes.fromhex(s.key)
    kid = _kid(raw)
    key = next((k for k in trusted_keys if _raw(k) == raw), None)
    if key is None:
        raise SignatureError("untrusted-key", f"signed by key {kid}, which is not a trusted key", key_id=kid)
    try:
        key.verify(bytes.fromhex(s.sig), _message_of(container, magic))
    except InvalidSignature:
        raise SignatureError("bad-signature", f"signature by key {kid} does not match the contents "
                             f"(modified after signing)", key_id=kid) from None
    return kid


def signature_of(container: Container) -> dict | None:
    """Who signed ``container``, without checking the signature or trusting the key (for
    ``inspect``): ``{"alg", "key" (64 hex), "key_id"}``, or None if it is unsigned.
    :class:`SignatureError` ("malformed-signature") if the section is not a signature."""
    s = _read_signature(container)
    if s is None:
        return None
    return {"alg": s.alg, "key": s.key, "key_id": _kid(bytes.fromhex(s.key))}
