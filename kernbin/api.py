"""The public API, one verb each, from the module that owns it:

- :mod:`kernbin.loader`: what loads (one gate for every backend, the fallback to the IR, bundles);
- :mod:`kernbin.builder`: what builds (the register-file policy, many targets in parallel, the cache);
- :mod:`kernbin.trust`: what decides trust (the keys in force, reading a ``.knb`` under them);
- :mod:`kernbin.backends`: the registry (devices).

``import kernbin`` imports none of them; ``kernbin.load`` imports the loader only.
"""

from __future__ import annotations

from .backends import list_devices, open_device
from .builder import (_build_job, _build_on, _run_builds, _stamp, build, build_many, create_bundle,  # noqa: F401
                      default_cache, get_or_build, get_or_build_ex)
from .loader import (BundleChoice, OpenBundle, _gate, _probe, check, choose_entry, gate_from_bundle,  # noqa: F401
                     load, load_from_bundle, load_gated, load_many, open_bundle)
from .trust import keys_in_force

__all__ = ["list_devices", "open_device", "build", "build_many", "load", "check", "get_or_build",
           "get_or_build_ex", "default_cache", "read_native", "open_bundle", "load_from_bundle", "load_many",
           "create_bundle"]


def read_native(source, trusted_keys=None):
    """A verified :class:`~kernbin.artifact.NativeBinary` from itself, ``.knb`` bytes or a path.

    When keys are trusted (``trusted_keys``, or ``KERNBIN_TRUSTED_KEYS`` in the environment), the
    file must carry a valid signature by one of them (:class:`kernbin.signing.SignatureError`
    otherwise, before anything else is looked at): checksums only catch accidents."""
    from .trust import read_native as read
    return read(source, keys_in_force(trusted_keys))
