"""Build options as one frozen, validated value, parsed once at the edge.

:class:`BuildOptions` holds what the caller asked for:

``flags``            the compiler flags, a tuple (a string is split on whitespace);
``register_file``    ``default`` | ``small`` | ``large`` | ``auto`` (see :mod:`kernbin.policy`);
``spill_threshold``  bytes of reported spill above which ``auto`` tries the large register file.

It never queries a device. :meth:`BuildOptions.key` is the stable text the cache key uses.
The flags the compiler finally received (the policy may add a register-file flag) are
recorded separately, in ``BuildInfo.flags``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from .errors import OptionsError

__all__ = ["BuildOptions", "REGISTER_FILE_MODES", "DEFAULT_SPILL_THRESHOLD"]

REGISTER_FILE_MODES = ("default", "small", "large", "auto")
DEFAULT_SPILL_THRESHOLD = 0
_MAX_FLAGS_CHARS = 64 << 10


@dataclass(frozen=True)
class BuildOptions:
    flags: tuple[str, ...] = ()
    register_file: str = "default"
    spill_threshold: int = DEFAULT_SPILL_THRESHOLD

    def __post_init__(self):
        if isinstance(self.flags, str) or not all(isinstance(f, str) and f and not any(c.isspace() for c in f)
                                                  for f in self.flags):
            raise OptionsError("flags", f"flags must be a tuple of non-empty strings without spaces, "
                                        f"not {self.flags!r}")
        if sum(len(f) + 1 for f in self.flags) > _MAX_FLAGS_CHARS:
            raise OptionsError("flags", f"flags are longer than {_MAX_FLAGS_CHARS} characters")
        for f in self.flags:
            try:
                f.encode("utf-8")
            except UnicodeEncodeError:
                raise OptionsError("flags", f"flag {f!r} is not valid UTF-8 text") from None
        if self.register_file not in REGISTER_FILE_MODES:
            raise OptionsError("register_file", f"bad register-file mode {self.register_file!r} "
                                                f"(use one of {', '.join(REGISTER_FILE_MODES)})")
        if (not isinstance(self.spill_threshold, int) or isinstance(self.spill_threshold, bool)
                or self.spill_threshold < 0):
            raise OptionsError("spill_threshold", f"spill threshold must be a non-negative number of bytes, "
                                                  f"not {self.spill_threshold!r}")

    @classmethod
    def of(cls, options: "BuildOptions | str | Iterable[str] | None" = None, *, grf: str | None = None,
           spill_threshold: int | None = None) -> "BuildOptions":
        """The one place user input becomes options: a :class:`BuildOptions`, a flag string or
        a list of flags, with ``grf`` / ``spill_threshold`` overriding when given."""
        if isinstance(options, BuildOptions):
            base = options
        elif options is None:
            base = cls()
        elif isinstance(options, str):
            base = cls(tuple(options.split()))
        else:
            try:
                base = cls(tuple(options))
            except TypeError:
                raise OptionsError("flags", f"options must be a string or a list of flags, "
                                            f"not {type(options).__name__}") from None
        changes = {}
        if grf is not None:
            changes["register_file"] = grf
        if spill_threshold is not None:
            changes["spill_threshold"] = spill_threshold
        return replace(base, **changes) if changes else base

    @property
    def text(self) -> str:
        """The flags as one string, as compilers take them."""
        return " ".join(self.flags)

    def with_flags(self, *flags: str) -> "BuildOptions":
        return replace(self, flags=self.flags + tuple(flags))

    def key(self) -> str:
        """Stable text for the cache key: length-prefixed flags, then the policy (if any)."""
        parts = ["flags=" + "".join(f"{len(f)}:{f};" for f in self.flags)]
        if self.register_file != "default":
            parts.append(f"grf={self.register_file}")
            if self.register_file == "auto":
                parts.append(f"spill_threshold={self.spill_threshold}")
        return "|".join(parts)

    def to_json(self) -> dict:
        return {"flags": list(self.flags), "register_file": self.register_file,
                "spill_threshold": self.spill_threshold}

    @classmethod
    def from_json(cls, obj) -> "BuildOptions":
        if not isinstance(obj, dict) or not isinstance(obj.get("flags"), list):
            raise OptionsError("flags", "options must be an object with a 'flags' list")
        return cls(tuple(obj["flags"]), obj.get("register_file", "default"),
                   obj.get("spill_threshold", DEFAULT_SPILL_THRESHOLD))
