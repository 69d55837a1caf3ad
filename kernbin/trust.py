"""What decides trust: the keys in force, and reading a ``.knb`` under them.

One rule for every verb that hands bytes to a driver (``load``, ``check``, bundle loads, the
fallback's cache hits): when keys are trusted (an argument, else ``KERNBIN_TRUSTED_KEYS``), bytes
must carry a valid signature by one of them; checksums alone only catch accidents.

The keys of ``KERNBIN_TRUSTED_KEYS`` are read once per process for each value of the variable (not
once per load): a process that must see a rotated key file under the same name sets the variable
again (any change of its text re-reads the files) or passes ``trusted_keys=``.
"""

from __future__ import annotations

import os

from .artifact import KNB_MAGIC, KNB_VERSION, MAX_HEADER, MAX_KNB_BYTES, NativeBinary, _explain

__all__ = ["keys_in_force", "read_native", "require_signed"]

_ENV = "KERNBIN_TRUSTED_KEYS"
_env_cache: tuple = (None, None)         # (the variable's text, its keys): one object, replaced whole


def keys_in_force(trusted_keys=None):
    """The trusted public keys in force: the argument, else ``KERNBIN_TRUSTED_KEYS`` (read once per
    value of the variable), else None (no trust asked for)."""
    if trusted_keys is not None:
        return list(trusted_keys)
    value = os.environ.get(_ENV)
    if not value:
        return None
    global _env_cache
    seen, keys = _env_cache
    if seen != value:
        from .signing import trusted_keys_from_env
        keys = trusted_keys_from_env()
        _env_cache = (value, keys)
    return list(keys)


def require_signed(keys) -> bool:
    """Whether bytes must be signed: keys are in force (an empty list trusts no signer at all)."""
    return keys is not None


def read_native(source, keys=None) -> NativeBinary:
    """A verified :class:`NativeBinary` from itself, ``.knb`` bytes or a path, parsed once.

    ``keys`` are the keys in force (:func:`keys_in_force`); with keys the file must carry a valid
    signature by one of them (:class:`kernbin.signing.SignatureError` otherwise, before anything
    else is looked at). A :class:`NativeBinary` object carries no signature, so it is refused then."""
    if keys is None:
        if isinstance(source, NativeBinary):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            return NativeBinary.from_bytes(source)
        return NativeBinary.from_file(source)
    from . import container, signing
    from ._fs import read_regular_file
    if isinstance(source, NativeBinary):
        raise signing.SignatureError("unsigned", "a NativeBinary object carries no signature: pass the .knb "
                                                 "bytes or file when keys are trusted")
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else \
        read_regular_file(source, MAX_KNB_BYTES, what=".knb file")
    try:
        c = container.Container.parse(data, magic=KNB_MAGIC, versions=(KNB_VERSION,), max_header=MAX_HEADER)
    except container.ContainerError as e:
        raise _explain(e) from None
    signing.verify(c, keys, magic=KNB_MAGIC)
    return NativeBinary._from_container(c)
