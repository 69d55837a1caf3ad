"""PTX modules: validation and stable hashing.

PTX is NVIDIA's virtual ISA, text. It is checked far enough to trust its module
header and its kernel list, not its body:

- at most :data:`MAX_PTX_BYTES`; UTF-8 text (in practice ASCII) with no NUL byte, except
  for trailing NULs (PTX handed to a driver is a C string, so a terminating NUL is common;
  ``data`` keeps them, parsing ignores them);
- ``//`` and ``/* */`` comments are ignored (an unterminated ``/*`` is an error), and so
  is the inside of string literals (``.file 1 "..."``; unterminated is an error too);
- the module begins with ``.version X.Y`` (major 1..9), immediately followed by
  ``.target sm_XY[a|f][, option...]`` (one architecture; options such as ``debug`` or
  ``texmode_independent`` are kept in ``target_options``), optionally immediately followed by
  ``.address_size 32|64`` (64 when absent); none of them appears twice;
- every ``.entry`` names a PTX identifier and has a body or ends in ``;`` (a declaration);
  no kernel is defined twice. ``entry_points`` lists every name once, in module order.

A defect raises :class:`~kernbin.errors.InvalidIR` with the byte offset of the problem
in ``data``; never an IndexError, UnicodeDecodeError or ValueError. Parsing is linear in
the size of the input: a handful of scans (``bytes.find`` and regular expressions without
nested quantifiers), no recursion.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import InvalidIR
from ._base import IRModule

try:  # the package's limit; a literal fallback should kernbin.ir ever import this module early
    from . import MAX_IR_BYTES as _MAX_IR_BYTES
except ImportError:  # pragma: no cover
    _MAX_IR_BYTES = 256 << 20

__all__ = ["PtxModule", "looks_like_ptx", "MAX_PTX_BYTES"]

#: PTX larger than this is refused (read at call time, so tests can lower it)
MAX_PTX_BYTES = _MAX_IR_BYTES

#: how much of the data :func:`looks_like_ptx` looks at
SNIFF_BYTES = 8192

_WS = rb" \t\r\n\f\v"
_SKIP_WS = re.compile(rb"[ \t\r\n\f\v]*")
# PTX identifiers: [a-zA-Z]{followsym}* or [_$%]{followsym}+, followsym = [a-zA-Z0-9_$]
_IDENT = rb"(?:[A-Za-z][A-Za-z0-9_$]*|[_$%][A-Za-z0-9_$]+)"
_WS_IDENT = re.compile(rb"[ \t\r\n\f\v]*(" + _IDENT + rb")")
_WS_COMMA_IDENT = re.compile(rb"[ \t\r\n\f\v]*,[ \t\r\n\f\v]*(" + _IDENT + rb")")
# the module-level directives this parser cares about, as whole tokens
_DIRECTIVE = re.compile(rb"(?<![A-Za-z0-9_$%.])\.(version|target|address_size|entry)(?![A-Za-z0-9_])")
# bounded digit runs: int() of a huge digit string is slow and, past 4300 digits, a ValueError
_VERSION = re.compile(rb"[ \t\r\n\f\v]+(\d{1,3})\.(\d{1,3})(?![A-Za-z0-9_$.])")
_ADDRESS_SIZE = re.compile(rb"[ \t\r\n\f\v]+(\d{1,3})(?![A-Za-z0-9_$.])")
_SM = re.compile(rb"sm_([1-9][0-9]{1,2})([af]?)")
_ARCH_LIKE = re.compile(rb"(?:sm|compute|lto)_[0-9]")
_BODY_OR_SEMI = re.compile(rb"[{;]")
_STRING_STOP = re.compile(rb'["\\\n]')
_COMMENT_OR_STRING = re.compile(rb'/[/*]|"')
_BLANK_EXCEPT_NEWLINES = bytes(b if b in (0x0A, 0x0D) else 0x20 for b in range(256))


@dataclass(frozen=True)
class PtxModule(IRModule):
    """A validated PTX module. Build one with :meth:`from_bytes` or :meth:`from_file`."""

    data: bytes = field(repr=False)
    version: tuple[int, int]
    target: str
    target_options: tuple[str, ...]
    address_size: int
    entry_points: tuple[str, ...]
    kind: str = "ptx"

    @property
    def sm(self) -> int:
        """The compute capability as a number: 90 for ``sm_90a``, 120 for ``sm_120f``."""
        return int(_SM.fullmatch(self.target.encode()).group(1))

    @property
    def arch_suffix(self) -> str:
        """``""``, ``"a"`` (architecture-specific, e.g. ``sm_90a``) or ``"f"`` (family-specific)."""
        return _SM.fullmatch(self.target.encode()).group(2).decode()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "PtxModule":
        from .._fs import read_regular_file
        return cls.from_bytes(read_regular_file(path, MAX_PTX_BYTES, what="PTX file"))

    @classmethod
    def from_bytes(cls, data: bytes) -> "PtxModule":
        data = bytes(data)
        limit = MAX_PTX_BYTES
        if len(data) > limit:
            raise InvalidIR(f"PTX is {len(data)} bytes, more than the {limit}-byte limit", limit)
        text = data.rstrip(b"\0")           # trailing NUL terminator(s): kept in data, not parsed
        nul = text.find(b"\0")
        if nul >= 0:
            raise InvalidIR("NUL byte inside PTX text", nul)
        if not text.isascii():
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidIR(f"PTX is not UTF-8 text ({e.reason})", e.start) from None
        clean = _blank_comments_and_strings(text)
        return cls._parse(data, clean)

    @classmethod
    def _parse(cls, data: bytes, clean: bytes) -> "PtxModule":
        directives = [(m.group(1), m.start(), m.end()) for m in _DIRECTIVE.finditer(clean)]
        start = _SKIP_WS.match(clean).end()
        if not directives or directives[0][1] != start or directives[0][0] != b"version":
            versions = [at for name, at, _ in directives if name == b"version"]
            targets = [at for name, at, _ in directives if name == b"target"]
            if not versions:
                raise InvalidIR("no .version directive: PTX must begin with .version"
                                + (f" (found {_token_at(clean, start)!r})" if start < len(clean) else ""), start)
            if targets and targets[0] < versions[0]:
                raise InvalidIR(".target before .version: PTX must begin with .version", targets[0])
            raise InvalidIR(f"PTX must begin with .version, found {_token_at(clean, start)!r}", start)
        pos = directives[0][2]

        m = _VERSION.match(clean, pos)
        if not m:
            raise InvalidIR(".version needs a version number MAJOR.MINOR", pos)
        major, minor = int(m.group(1)), int(m.group(2))
        if not 1 <= major <= 9 or minor > 99:
            raise InvalidIR(f"implausible PTX ISA version {major}.{minor}", m.start(1))
        pos = m.end()

        after = _SKIP_WS.match(clean, pos).end()
        if len(directives) < 2 or directives[1][0] != b"target" or directives[1][1] != after:
            raise InvalidIR(".version must be immediately followed by .target, found "
                            f"{_token_at(clean, after)!r}", after)
        pos = directives[1][2]
        m = _WS_IDENT.match(clean, pos)
        if not m or _SKIP_WS.match(clean, pos).end() == pos:
            raise InvalidIR(".target needs a target architecture (sm_XY)", pos)
        target_at = m.start(1)
        arch = _SM.fullmatch(m.group(1))
        if not arch:
            raise InvalidIR(f"unsupported .target {m.group(1).decode()!r}: expected sm_XY with an "
                            "optional a or f suffix", target_at)
        target = m.group(1).decode()
        options = []
        pos = m.end()
        while True:
            m = _WS_COMMA_IDENT.match(clean, pos)
            if not m:
                break
            if _ARCH_LIKE.match(m.group(1)):
                raise InvalidIR(f"more than one .target architecture ({m.group(1).decode()!r})", m.start(1))
            options.append(m.group(1).decode())
            pos = m.end()
        after = _SKIP_WS.match(clean, pos).end()
        if clean[after:after + 1] == b",":
            raise InvalidIR(".target option is not an identifier", after + 1)

        address_size = 64
        rest = 2
        if len(directives) > 2 and directives[2][0] == b"address_size" and directives[2][1] == after:
            m = _ADDRESS_SIZE.match(clean, directives[2][2])
            if not m or m.group(1) not in (b"32", b"64"):
                raise InvalidIR(".address_size must be 32 or 64", directives[2][2])
            address_size = int(m.group(1))
            rest = 3

        entries: dict[str, bool] = {}       # name -> defined (has a body), in order of first mention
        for k in range(rest, len(directives)):
            name, at, end = directives[k]
            if name != b"entry":
                where = "immediately after .target" if name == b"address_size" else "once, at the start"
                raise InvalidIR(f".{name.decode()} may appear only {where}", at)
            m = _WS_IDENT.match(clean, end)
            if not m:
                raise InvalidIR(".entry without a valid kernel name", end)
            entry = m.group(1).decode()
            # a body ("{") makes a definition, ";" a declaration; looked for only up to the
            # next directive, so that the scans never overlap (linear time)
            stop = directives[k + 1][1] if k + 1 < len(directives) else len(clean)
            body = _BODY_OR_SEMI.search(clean, m.end(), stop)
            if not body:
                raise InvalidIR(f".entry {entry} has neither a body nor a ';' (truncated?)", at)
            defined = body.group() == b"{"
            if defined and entries.get(entry):
                raise InvalidIR(f"duplicate .entry {entry!r}", m.start(1))
            entries[entry] = entries.get(entry, False) or defined
        return cls(data=data, version=(major, minor), target=target, target_options=tuple(options),
                   address_size=address_size, entry_points=tuple(entries))


def _token_at(clean: bytes, pos: int) -> str:
    """The token at ``pos`` (for messages), shortened."""
    end = pos
    while end < len(clean) and end - pos < 40 and clean[end] not in _WS:
        end += 1
    return clean[pos:end].decode("utf-8", "replace")


def _blank_comments_and_strings(text: bytes) -> bytes:
    """``text`` with comments and the insides of string literals overwritten by spaces
    (newlines kept), so that byte offsets stay those of the input. Linear: every search
    starts where the previous one stopped."""
    out = None
    pos = 0
    n = len(text)
    search = _COMMENT_OR_STRING.search
    while True:
        m = search(text, pos)
        if not m:
            break
        i = m.start()
        if out is None:
            out = bytearray(text)
        tok = m.group()
        if tok == b"//":
            end = text.find(b"\n", i)
            end = n if end < 0 else end
            out[i:end] = b" " * (end - i)
        elif tok == b"/*":
            end = text.find(b"*/", i + 2)
            if end < 0:
                raise InvalidIR("unterminated /* comment", i)
            end += 2
            out[i:end] = text[i:end].translate(_BLANK_EXCEPT_NEWLINES)
        else:  # string literal: ends at the next unescaped quote, on the same line
            j = i + 1
            while True:
                s = _STRING_STOP.search(text, j)
                if not s or text[s.start()] == 0x0A:
                    raise InvalidIR("unterminated string literal", i)
                if text[s.start()] == 0x5C:  # backslash escape: skip the escaped byte
                    if s.start() + 1 >= n or text[s.start() + 1] == 0x0A:
                        raise InvalidIR("unterminated string literal", i)
                    j = s.start() + 2
                    continue
                end = s.start()
                break
            out[i + 1:end] = b" " * (end - i - 1)
            end += 1
        pos = end
    return text if out is None else bytes(out)


def looks_like_ptx(data: bytes) -> bool:
    """True when ``data`` looks like PTX text: after blank space and ``//`` or ``/* */``
    comments, the first directive is ``.version``. Looks at the first :data:`SNIFF_BYTES`
    bytes only; never raises."""
    head = bytes(data[:SNIFF_BYTES])
    pos = 0
    while True:
        pos = _SKIP_WS.match(head, pos).end()
        if head.startswith(b"//", pos):
            end = head.find(b"\n", pos)
            if end < 0:
                return False
            pos = end + 1
        elif head.startswith(b"/*", pos):
            end = head.find(b"*/", pos + 2)
            if end < 0:
                return False
            pos = end + 2
        else:
            break
    if not head.startswith(b".version", pos) or head[pos + 8:pos + 9] not in (b" ", b"\t", b"\r", b"\n"):
        return False
    return b"\0" not in head.rstrip(b"\0") and _utf8_prefix_ok(head[:pos])


def _utf8_prefix_ok(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
