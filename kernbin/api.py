"""The public API; the one place where backends are wired to the artifact model.

Loading a native binary goes through the same gate for every backend:

1. the ``.knb`` container is verified (header hash, section hashes, exact size);
2. the binary's :class:`~kernbin.device.DeviceId` must be compatible with the device;
3. the backend's cheap structural check of the device-binary bytes;
4. only then does the runtime see the bytes.

When any step fails and the IR is at hand (embedded in the ``.knb`` or passed
by the caller), the module is rebuilt from the IR with the recorded build options,
a :class:`~kernbin.errors.FallbackWarning` says why (once per reason), and the new
binary is on ``module.native`` for the caller to store (``module.rebuilt`` is True).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

from .artifact import NativeBinary
from .errors import (FallbackWarning, IncompatibleBinary, InvalidBinary, KernbinError,
                     RuntimeAPIError, RuntimeNotFound)
from .ir import SpirvModule, read_ir
from .target import Target, parse_target

__all__ = ["list_devices", "open_device", "build", "build_many", "load", "check", "get_or_build",
           "default_cache"]


def list_devices(backends=None) -> list:
    """Every device of every implemented backend (``DeviceInfo``); runtimes that are
    missing are skipped. ``backends`` restricts to the given names."""
    from .backends import IMPLEMENTED, get_backend
    out = []
    for name in backends or IMPLEMENTED:
        try:
            out.extend(get_backend(name).list_devices())
        except KernbinError:
            continue
    return out


def open_device(target: "str | Target"):
    """A live device for ``target`` (e.g. ``"opencl:cpu"``), shared within the process."""
    from .backends import get_backend
    t = parse_target(target)
    return get_backend(t.backend).open_device(t)


def _device(target_or_device):
    if isinstance(target_or_device, (str, Target)):
        return open_device(target_or_device)
    return target_or_device


def build(ir, target="opencl:cpu", options: str = "", *, grf: str = "default",
          spill_threshold: int | None = None) -> NativeBinary:
    """Build IR (a :class:`SpirvModule`, SPIR-V bytes or a path) into a native binary.

    ``grf`` picks the register-file policy (``default``, ``small``, ``large``, ``auto``;
    see :mod:`kernbin.policy`) on targets that have one. The returned binary embeds
    the IR, so a loader can fall back to it.
    """
    device = _device(target)
    return _build_on(device, read_ir(ir), options, _policy(grf, spill_threshold))


def _policy(grf: str, spill_threshold: int | None):
    from .policy import DEFAULT_SPILL_THRESHOLD, GrfPolicy
    return GrfPolicy(grf, DEFAULT_SPILL_THRESHOLD if spill_threshold is None else spill_threshold)


def _build_on(device, ir: SpirvModule, options: str, policy) -> NativeBinary:
    from .policy import build_with_policy
    return build_with_policy(lambda opts: device.build(ir, opts), options, policy,
                             getattr(device, "grf_flags", None), what=str(device.target))


def _build_one(ir, target: str, options: str, grf: str, spill_threshold, use_cache: bool):
    if use_cache:
        return get_or_build_ex(ir, target, options, grf=grf, spill_threshold=spill_threshold)
    return build(ir, target, options, grf=grf, spill_threshold=spill_threshold), False


def _build_job(ir_bytes: bytes, target: str, options: str, grf: str, spill_threshold, use_cache: bool):
    """One target of :func:`build_many`, in a worker process: returns (.knb bytes, cache hit);
    the parent verifies the bytes again as it reads them."""
    native, hit = _build_one(ir_bytes, target, options, grf, spill_threshold, use_cache)
    return native.to_bytes(), hit


def build_many(ir, targets, options: str = "", *, grf: str = "default", spill_threshold: int | None = None,
               jobs: int | None = None, use_cache: bool = True, progress=None) -> dict:
    """Build one IR for several targets in parallel worker processes (one per core by default).

    Returns ``{target: (NativeBinary, cache_hit)}`` in the order given. ``progress(target)``
    is called as each finishes. Workers are separate processes: offline compilers keep
    global state and are not safe to run in threads.
    """
    ir = read_ir(ir)
    targets = [str(parse_target(t)) for t in targets]
    _policy(grf, spill_threshold)        # validate before starting workers
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(targets)))
    results = {}
    if jobs == 1:
        for t in targets:
            results[t] = _build_one(ir, t, options, grf, spill_threshold, use_cache)
            if progress:
                progress(t)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_build_job, ir.data, t, options, grf, spill_threshold, use_cache): t
                   for t in targets}
        for fut in as_completed(futures):
            t = futures[fut]
            data, hit = fut.result()
            results[t] = (NativeBinary.from_bytes(data), hit)
            if progress:
                progress(t)
    return {t: results[t] for t in targets}


_warned: set[tuple[str, str]] = set()


def _fallback(device, ir: SpirvModule | None, options: str | None, reason: str, error: Exception,
              previous=None):
    if ir is None:
        raise error
    if options is None:
        options = ""
    key = (reason, ir.sha256)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernbin: rebuilding from IR for {device.target}: {reason}", FallbackWarning,
                      stacklevel=3)
    native = device.build(ir, options)
    if previous is not None and "policy" in previous.extra:   # keep what keys the cache
        extra = dict(native.info.extra)
        extra.update({k: previous.extra[k] for k in ("policy", "requested_options", "grf") if k in previous.extra})
        native = replace(native, info=replace(native.info, extra=extra))
    module = device.load_native(native)
    module.source = "ir"
    module.fallback_reason = reason
    return module


def _gate(device, native: NativeBinary) -> None:
    """Raise unless these (already checksummed) bytes may be handed to this device."""
    ok, reason = native.info.device.compatible_with(device.id)
    if not ok:
        raise IncompatibleBinary(reason, native.info.device, device.id)
    problem = device.check_native(native.binary)
    if problem:
        raise InvalidBinary(problem)


def load(native, target="opencl:cpu", *, ir=None, fallback: bool = True):
    """Load a native binary (a :class:`NativeBinary`, ``.knb`` bytes or a path) natively.

    ``ir`` supplies the IR for the fallback when the binary has none embedded.
    With ``fallback=False`` the reason the binary cannot be used is raised instead
    (:class:`InvalidBinary`, :class:`IncompatibleBinary` or :class:`RuntimeAPIError`).
    """
    device = _device(target)
    given_ir = read_ir(ir) if ir is not None else None
    if not isinstance(native, NativeBinary):
        try:
            native = (NativeBinary.from_bytes(native) if isinstance(native, (bytes, bytearray, memoryview))
                      else NativeBinary.from_file(native))
        except InvalidBinary as e:
            if not fallback:
                raise
            info = e.build_info
            use_ir = e.ir or given_ir
            if use_ir is not None and info is not None and use_ir.sha256 != info.ir_sha256:
                raise KernbinError("the IR given does not match the IR this binary was built from") from e
            return _fallback(device, use_ir, info.options if info else None, e.reason, e, info)
    use_ir = native.ir or given_ir
    if given_ir is not None and given_ir.sha256 != native.info.ir_sha256:
        raise KernbinError("the IR given does not match the IR this binary was built from "
                           f"({given_ir.sha256[:12]} != {native.info.ir_sha256[:12]})")
    try:
        _gate(device, native)
        return device.load_native(native)
    except (IncompatibleBinary, InvalidBinary) as e:
        if not fallback:
            raise
        return _fallback(device, use_ir, native.info.options, e.reason, e, native.info)
    except RuntimeAPIError as e:        # the runtime refused the (verified) bytes
        if not fallback:
            raise
        return _fallback(device, use_ir, native.info.options, f"the runtime rejected the binary: {e}", e,
                         native.info)


def check(native, target="opencl:cpu") -> dict:
    """Verify integrity and compatibility, then load natively (no fallback).

    Returns ``{"ok": bool, "reason": str, "kernels": [...], ...}``; never raises
    for a bad binary (only for a bad target or a missing runtime).
    """
    device = _device(target)
    result = {"target": str(device.target), "device": device.id.describe(), "ok": False, "reason": "",
              "kernels": []}
    try:
        if not isinstance(native, NativeBinary):
            native = NativeBinary.from_file(native) if isinstance(native, (str, os.PathLike)) \
                else NativeBinary.from_bytes(native)
        module = load(native, device, fallback=False)
        result["ok"] = True
        result["kernels"] = [{"name": n, **module.kernel(n).attributes} for n in module.kernel_names]
    except (InvalidBinary, IncompatibleBinary, RuntimeAPIError, RuntimeNotFound) as e:
        result["reason"] = str(e)         # RuntimeNotFound here: an offline target cannot load
    return result


_caches: dict = {}


def default_cache():
    """The cache configured by the environment (``KERNBIN_CACHE_DIR``, ``KERNBIN_CACHE_MAX_SIZE``,
    ``KERNBIN_REMOTE``, ``KERNBIN_CACHE_HMAC_KEY``), one per configuration per process."""
    from .cache import Cache
    conf = tuple(os.environ.get(k) for k in ("KERNBIN_CACHE_DIR", "KERNBIN_CACHE_MAX_SIZE", "KERNBIN_REMOTE",
                                              "KERNBIN_CACHE_HMAC_KEY"))
    cache = _caches.get(conf)
    if cache is None:
        cache = _caches[conf] = Cache.from_env()
    return cache


def get_or_build_ex(ir, target="opencl:cpu", options: str = "", *, grf: str = "default",
                    spill_threshold: int | None = None, cache=None) -> tuple[NativeBinary, bool]:
    """Like :func:`get_or_build`, also saying whether it was a cache hit."""
    from .cache import cache_key
    device = _device(target)
    ir = read_ir(ir)
    policy = _policy(grf, spill_threshold)
    cache = cache or default_cache()
    key = cache_key(ir.sha256, device.id.backend, device.id, options, policy.key())
    native, hit = cache.get_or_build(key, lambda: _build_on(device, ir, options, policy))
    return (native if native.ir is not None else replace(native, ir=ir)), hit


def get_or_build(ir, target="opencl:cpu", options: str = "", *, grf: str = "default",
                 spill_threshold: int | None = None, cache=None) -> NativeBinary:
    """The native binary for (IR, device, options, register-file policy): from the cache when
    it holds a verified entry, else built, stored, and returned. Concurrent processes build a
    missing key once."""
    return get_or_build_ex(ir, target, options, grf=grf, spill_threshold=spill_threshold, cache=cache)[0]
