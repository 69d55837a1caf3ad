"""What builds: IR -> native binaries on a device (with the register-file policy), many targets in
parallel (local processes or a Ray cluster: :mod:`kernbin.executors`), through the cache, and bundles.

Loading is :mod:`kernbin.loader`; trust is :mod:`kernbin.trust`; :mod:`kernbin.api` is the public face
of all three.
"""

from __future__ import annotations

import os
from dataclasses import replace

from .artifact import NativeBinary
from .backends import open_device
from .errors import KernbinError
from .ir import IR, read_ir
from .options import BuildOptions
from .target import parse_target

__all__ = ["build", "build_many", "get_or_build", "get_or_build_ex", "default_cache", "create_bundle"]

_device = open_device


def build(ir, target="opencl:cpu", options: "BuildOptions | str | None" = None, *, grf: str | None = None,
          spill_threshold: int | None = None) -> NativeBinary:
    """Build IR (an IR object, bytes or a path) into a native binary for ``target``.

    ``options`` is a :class:`BuildOptions` or a flag string; ``grf`` picks the register-file
    policy (``default``, ``small``, ``large``, ``auto``; see :mod:`kernbin.policy`) on targets
    that have one. The returned binary embeds the IR, so a loader can fall back to it.
    """
    device = _device(target)
    return _build_on(device, read_ir(ir), BuildOptions.of(options, grf=grf, spill_threshold=spill_threshold))


def _stamp(device, native: NativeBinary) -> NativeBinary:
    return replace(native, info=replace(native.info, device_fingerprint=device.id.fingerprint))


def _build_on(device, ir: IR, options: BuildOptions) -> NativeBinary:
    from .policy import build_with_policy
    b = device.backend
    return _stamp(device, build_with_policy(lambda flags: device.build(ir, tuple(flags)), options,
                                            device.register_file_flags, b.register_file_spellings,
                                            what=str(device.target)))


def _build_one(ir, target: str, options: BuildOptions, use_cache: bool):
    if use_cache:
        return get_or_build_ex(ir, target, options)
    return build(ir, target, options), False


def _build_job(ir_bytes: bytes, ir_kind: str, target: str, options: dict, use_cache: bool):
    """One target of :func:`build_many`, in a worker process: returns (.knb bytes, cache hit);
    the parent verifies the bytes again as it reads them."""
    native, hit = _build_one(read_ir(ir_bytes, ir_kind), target, BuildOptions.from_json(options), use_cache)
    return native.to_bytes(), hit


def build_many(ir, targets, options: "BuildOptions | str | None" = None, *, grf: str | None = None,
               spill_threshold: int | None = None, jobs: int | None = None, use_cache: bool = True,
               progress=None, executor=None) -> dict:
    """Build one IR for several targets in parallel worker processes (one per core by default).

    Returns ``{target: (NativeBinary, cache_hit)}`` in the order given. ``progress(target)``
    is called as each finishes. Workers are separate processes: offline compilers keep
    global state and are not safe to run in threads. ``executor`` says where they run:
    ``"process"`` (the default; ``jobs`` at most), ``"ray"`` or ``"ray=ADDRESS"`` (tasks on a Ray
    cluster, each worker through its own cache; see :mod:`kernbin.executors`). Every answer is
    verified before it is returned. When a build fails the others still run to their end (and are
    cached), then the first failure is raised (a :class:`BuildError` with its log).
    """
    from .executors import BuildJob
    ir = read_ir(ir)
    targets = [str(parse_target(t)) for t in targets]
    opts = BuildOptions.of(options, grf=grf, spill_threshold=spill_threshold)
    todo = [BuildJob(ir, t, opts, use_cache) for t in targets]
    done = _run_builds(executor, jobs, todo, progress and (lambda i: progress(targets[i])))
    return dict(zip(targets, done))


def _run_builds(executor, jobs: int | None, todo: list, on_done) -> list:
    """``[(NativeBinary, cache_hit)]`` for build jobs: with local processes, what this process's
    cache already holds is read here first (no pool is started for hits); the rest goes to the
    executor (:func:`kernbin.executors.run_jobs`: verified, first failure raised)."""
    from .cache import cache_key
    from .executors import get_executor, run_jobs
    ex = get_executor(executor, jobs=jobs)
    out: list = [None] * len(todo)
    if not ex.remote:
        cache = default_cache()
        for i, job in enumerate(todo):
            if job.use_cache:
                device = _device(job.target)
                native = cache.get(cache_key(job.ir.sha256, device.toolchain, device.id.fingerprint, job.options))
                if native is not None:
                    out[i] = (replace(native, ir=job.ir), True)
                    if on_done:
                        on_done(i)
    rest = [i for i, r in enumerate(out) if r is None]
    if rest:
        got = run_jobs(ex, _build_job, [todo[i] for i in rest], on_done and (lambda j: on_done(rest[j])))
        for i, r in zip(rest, got):
            out[i] = r
    return out


_caches: dict = {}


def default_cache():
    """The cache configured by the environment (``KERNBIN_CACHE_DIR``, ``KERNBIN_CACHE_MAX_SIZE``,
    ``KERNBIN_REMOTE``, ``KERNBIN_CACHE_HMAC_KEY``, ``KERNBIN_CACHE_ALLOW_SHARED``,
    ``KERNBIN_REMOTE_LEASE_TTL``, ``KERNBIN_REMOTE_WAIT``), one per configuration per process."""
    from .cache import Cache
    conf = tuple(os.environ.get(k) for k in ("KERNBIN_CACHE_DIR", "KERNBIN_CACHE_MAX_SIZE", "KERNBIN_REMOTE",
                                              "KERNBIN_CACHE_HMAC_KEY", "KERNBIN_CACHE_ALLOW_SHARED",
                                              "KERNBIN_REMOTE_LEASE_TTL", "KERNBIN_REMOTE_WAIT"))
    cache = _caches.get(conf)
    if cache is None:
        cache = _caches[conf] = Cache.from_env()
    return cache


def get_or_build_ex(ir, target="opencl:cpu", options: "BuildOptions | str | None" = None, *,
                    grf: str | None = None, spill_threshold: int | None = None,
                    cache=None) -> tuple[NativeBinary, bool]:
    """Like :func:`get_or_build`, also saying whether it was a cache hit."""
    from .cache import cache_key
    device = _device(target)
    ir = read_ir(ir)
    opts = BuildOptions.of(options, grf=grf, spill_threshold=spill_threshold)
    cache = cache or default_cache()
    key = cache_key(ir.sha256, device.toolchain, device.id.fingerprint, opts)
    native, hit = cache.get_or_build(key, lambda: _build_on(device, ir, opts))
    return replace(native, ir=ir), hit         # the caller's IR: the key says the entry was built from it


def get_or_build(ir, target="opencl:cpu", options: "BuildOptions | str | None" = None, *,
                 grf: str | None = None, spill_threshold: int | None = None, cache=None) -> NativeBinary:
    """The native binary for (IR, device, options, register-file policy): from the cache when
    it holds a verified entry, else built, stored, and returned. Concurrent processes build a
    missing key once."""
    return get_or_build_ex(ir, target, options, grf=grf, spill_threshold=spill_threshold, cache=cache)[0]


def create_bundle(out, inputs, targets, options: "BuildOptions | str | None" = None, *, grf: str | None = None,
                  spill_threshold: int | None = None, keep_ir: bool = True, names=None, jobs: int | None = None,
                  use_cache: bool = True, sign_key=None, add_to: str | None = None, progress=None,
                  executor=None, trusted_keys=None, trust_existing: bool = False) -> dict:
    """Build every input (IR file or object) for every target (through the cache, all of them in
    parallel) and write one bundle at ``out``; with ``add_to`` the kernels and targets are added to
    that bundle's (same kernel name: same IR required; same target: replaced). Returns
    ``{name: {target: cache_hit}}``. ``executor`` says where the builds run (``"process"``, the
    default; ``"ray"`` or ``"ray=ADDRESS"``: see :func:`build_many`). When a build fails, the others
    still run to their end (and are cached), the first failure is raised and no bundle is written.

    What ``add_to`` holds is digest-checked, and when the result will be trusted (``sign_key``, or keys
    in force: ``trusted_keys`` / ``KERNBIN_TRUSTED_KEYS``) it must also be signed by a trusted key or
    by ``sign_key``'s own (:class:`~kernbin.signing.SignatureError` otherwise): signing never launders
    unsigned or foreign bytes. ``trust_existing=True`` says the caller vouches for them."""
    from .bundle import read_all, write_bundle
    from .executors import BuildJob
    from .trust import keys_in_force
    if sign_key is not None and isinstance(sign_key, (str, os.PathLike)):
        from . import signing
        sign_key = signing.load_private_key(sign_key)
    kernels = {}
    if add_to:
        keys = keys_in_force(trusted_keys)
        if (sign_key is not None or keys is not None) and not trust_existing:
            accepted = list(keys or []) + ([sign_key.public_key()] if sign_key is not None else [])
            kernels = read_all(add_to, trusted_keys=accepted, require_signature=True)
        else:
            kernels = read_all(add_to, require_signature=False)
    targets = [str(parse_target(t)) for t in targets]
    opts = BuildOptions.of(options, grf=grf, spill_threshold=spill_threshold)
    given, seen = [], {}
    for i, src in enumerate(inputs):
        ir = read_ir(src)
        name = names[i] if names else _bundle_name(src, ir)
        k = kernels.setdefault(name, {"ir": None, "natives": []})
        have = k["ir"] or next((nb.ir for nb in k["natives"] if nb.ir is not None), None)
        old_sha = seen.get(name) or (have.sha256 if have is not None else
                                     (k["natives"][0].info.ir_sha256 if k["natives"] else None))
        if old_sha is not None and old_sha != ir.sha256:
            raise KernbinError(f"bundle kernel {name!r} exists with other IR; give this input another name")
        seen[name] = ir.sha256
        given.append((name, ir))
    todo = [BuildJob(ir, t, opts, use_cache) for _, ir in given for t in targets]
    done = _run_builds(executor, jobs, todo, progress and (lambda i: progress(todo[i].target)))
    report = {}
    for n, (name, ir) in enumerate(given):
        results = dict(zip(targets, done[n * len(targets):(n + 1) * len(targets)]))
        k = kernels[name]
        new = {t: nb.without_ir() for t, (nb, _) in results.items()}
        k["natives"] = [nb for nb in k["natives"] if nb.info.target not in new] + list(new.values())
        if keep_ir:
            k["ir"] = ir
        report[name] = {t: hit for t, (_, hit) in results.items()}
    write_bundle(out, kernels, sign_key=sign_key)
    return report


def _bundle_name(src, ir) -> str:
    import re
    if isinstance(src, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(src)))[0]
    else:
        stem = ir.kernels[0] if ir.kernels else ir.sha256[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".-") or ir.sha256[:16]
    return name[:128]
