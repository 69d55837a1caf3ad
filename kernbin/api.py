"""The public API; the one place where backends are wired to the artifact model and the cache.

Loading a native binary goes through one gate for every backend:

1. the ``.knb`` container is verified (header digest, section digests, exact size; the IR
   section decoded by its recorded kind);
2. the device's backend decides whether the binary's requirements ("runs on") fit the
   device: ``Backend.can_run(info, device)``; the toolchain that built it is not asked;
3. the device's structural check of the bytes it will receive (and, for a fat binary, the
   member chosen by step 2);
4. only then does the runtime see the bytes.

When any step fails and the IR is at hand (embedded in the ``.knb`` or passed by the
caller), the module is rebuilt from the IR with the recorded compiler flags, a
:class:`~kernbin.errors.FallbackWarning` says why (once per reason), and the new binary is
on ``module.native`` for the caller to store (``module.rebuilt`` is True).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Any, NamedTuple

from . import _jit
from .artifact import NativeBinary
from .errors import (FallbackWarning, IncompatibleBinary, InvalidBinary, KernbinError, OfflineTarget,
                     RuntimeAPIError, SignatureError)
from .ir import IR, read_ir
from .options import BuildOptions
from .target import Target, parse_target

__all__ = ["list_devices", "open_device", "build", "build_many", "load", "check", "get_or_build",
           "get_or_build_ex", "default_cache", "read_native", "open_bundle", "load_from_bundle", "create_bundle"]


def list_devices(backends=None) -> list:
    """Every device of every registered backend (``DeviceInfo``); runtimes that are missing are
    skipped. ``backends`` restricts to the given names."""
    from .backends import REGISTRY, get_backend
    out = []
    for name in backends or REGISTRY:
        try:
            out.extend(get_backend(name).list_devices())
        except KernbinError:
            continue
    return out


def open_device(target: "str | Target"):
    """A live device for ``target`` (e.g. ``"opencl:cpu"``), shared within the process."""
    from .backends import get_backend
    t = parse_target(target)
    return get_backend(t.backend).open(t)


def _device(target_or_device):
    if isinstance(target_or_device, (str, Target)):
        return open_device(target_or_device)
    return target_or_device


def read_native(source, trusted_keys=None) -> NativeBinary:
    """A verified :class:`NativeBinary` from itself, ``.knb`` bytes or a path.

    When keys are trusted (``trusted_keys``, or ``KERNBIN_TRUSTED_KEYS`` in the environment), the
    file must carry a valid signature by one of them (:class:`kernbin.signing.SignatureError`
    otherwise, before anything else is looked at): checksums only catch accidents."""
    keys = _trust(trusted_keys)
    if keys is None:
        if isinstance(source, NativeBinary):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            return NativeBinary.from_bytes(source)
        return NativeBinary.from_file(source)
    from . import container, signing
    from ._fs import read_regular_file
    from .artifact import KNB_MAGIC, KNB_VERSION, MAX_KNB_BYTES
    if isinstance(source, NativeBinary):
        raise signing.SignatureError("unsigned", "a NativeBinary object carries no signature: pass the .knb "
                                                 "bytes or file when keys are trusted")
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else \
        read_regular_file(source, MAX_KNB_BYTES, what=".knb file")
    try:
        c = container.Container.parse(data, magic=KNB_MAGIC, versions=(KNB_VERSION,))
    except container.ContainerError:
        return NativeBinary.from_bytes(data)          # raises the precise InvalidBinary
    signing.verify(c, keys, magic=KNB_MAGIC)
    return NativeBinary.from_bytes(data)


def _trust(trusted_keys):
    """The trusted public keys in force: the argument, else ``KERNBIN_TRUSTED_KEYS``, else None."""
    if trusted_keys is not None:
        return list(trusted_keys)
    if os.environ.get("KERNBIN_TRUSTED_KEYS"):
        from . import signing
        return signing.trusted_keys_from_env()
    return None


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


_warned: set[tuple[str, str]] = set()


def _fallback(device, ir: IR | None, info, reason: str, error: Exception):
    """Rebuild from the IR with the recorded flags (and keep the recorded request)."""
    if ir is None:
        raise error
    key = (reason, ir.sha256)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernbin: rebuilding from IR for {device.target}: {reason}", FallbackWarning, stacklevel=3)
    native = _stamp(device, device.build(ir, tuple(info.flags) if info is not None else ()))
    if info is not None:
        native = replace(native, info=replace(native.info, options=info.options, register_file=info.register_file))
    module = device.load_native(native)
    module.source = "ir"
    module.fallback_reason = reason
    return module


def _gate(device, native: NativeBinary, fit=None):
    """The bytes to hand to this device, and the verdict that allowed it; raises
    IncompatibleBinary (requirements) or InvalidBinary (the bytes themselves) otherwise. ``fit``:
    the verdict already reached on this very ``native.info`` (a bundle's choice), not asked again."""
    if fit is None:
        fit = device.backend.can_run(native.info, device)
    if not fit.ok:
        raise IncompatibleBinary(fit.reason, rule=fit.rule or "incompatible", requires=native.info.requires,
                                 device=device.id)
    return device.payload(native, fit), fit


def _load_checked(device, native: NativeBinary, strict: bool | None = None):
    payload, fit = _gate(device, native)
    _jit.refuse_possible_jit(device, fit, strict)
    module = device.load_native(native, payload)
    module.member = fit.member
    return _jit.report_driver_jit(module, fit, strict)


def load(native, target="opencl:cpu", *, ir=None, fallback: bool = True, trusted_keys=None,
         isolate: bool = False, strict: bool | None = None):
    """Load a native binary (a :class:`NativeBinary`, ``.knb`` bytes or a path) natively.

    ``ir`` supplies the IR for the fallback when the binary has none embedded.
    With ``fallback=False`` the reason the binary cannot be used is raised instead
    (:class:`InvalidBinary`, :class:`IncompatibleBinary` or :class:`RuntimeAPIError`). With trusted
    keys (argument or ``KERNBIN_TRUSTED_KEYS``) an unsigned or badly signed file is refused, and
    nothing from it (not its IR either) is used; only IR passed as ``ir`` may then be rebuilt from.
    With ``isolate`` the bytes are first loaded in a child process (as ``check(isolate=True)``), so
    a runtime that would crash on them crashes there; the verdict is remembered per binary and
    device (in memory and under the cache directory), so the probe is paid once.
    A native load the driver JIT-compiled (``module.driver_jit``) warns, or with ``strict`` (default:
    ``KERNBIN_STRICT``) raises :class:`~kernbin.errors.DriverJitError` (see :mod:`kernbin._jit`).
    """
    device = _device(target)
    given_ir = read_ir(ir) if ir is not None else None
    try:
        native = read_native(native, trusted_keys)
    except SignatureError as e:
        if not fallback or given_ir is None:
            raise
        return _fallback(device, given_ir, None, f"untrusted binary: {e.reason}", e)
    except InvalidBinary as e:
        if not fallback:
            raise
        info = e.build_info
        use_ir = e.ir or given_ir
        if use_ir is not None and info is not None and use_ir.sha256 != info.ir_sha256:
            raise KernbinError("the IR given does not match the IR this binary was built from") from e
        return _fallback(device, use_ir, info, e.reason, e)
    if given_ir is not None and given_ir.sha256 != native.info.ir_sha256:
        raise KernbinError("the IR given does not match the IR this binary was built from "
                           f"({given_ir.sha256[:12]} != {native.info.ir_sha256[:12]})")
    try:
        if isolate:
            verdict = _remembered_probe(device, native)
            if verdict["verdict"] != "native":
                raise RuntimeAPIError(device.target.backend, "isolated load", None, verdict.get("rule"),
                                      verdict.get("reason", ""))
        return _load_checked(device, native, strict)
    except (IncompatibleBinary, InvalidBinary) as e:
        if not fallback:
            raise
        return _fallback(device, _ir_to_rebuild(native, given_ir), native.info, e.reason, e)
    except RuntimeAPIError as e:        # the runtime refused the (verified) bytes
        if not fallback:
            raise
        return _fallback(device, _ir_to_rebuild(native, given_ir), native.info,
                         f"the runtime rejected the binary: {e}", e)


def _ir_to_rebuild(native: NativeBinary, given_ir):
    """The IR a fallback rebuilds from: the embedded one (checked only now: a native load never
    reads it), else the one the caller gave; a corrupt embedded IR raises when none was given."""
    if given_ir is not None and not native.has_ir:
        return given_ir
    try:
        return native.ir or given_ir
    except InvalidBinary:
        if given_ir is None:
            raise
        return given_ir


def check(native, target="opencl:cpu", *, isolate: bool = False, trusted_keys=None,
          strict: bool | None = None) -> dict:
    """Verify integrity and requirements, then load natively (no fallback) and create every kernel.

    Returns ``{"ok", "verdict", "reason", "rule", "member", "kernels", ...}``: ``verdict`` is
    ``"native"`` (loaded natively, every kernel created), ``"gate"`` (kernbin refused the bytes
    before the runtime saw them) or ``"driver"`` (the runtime refused them, or crashed). With
    ``isolate`` the runtime's part runs in a child process, so a driver that crashes on the bytes
    (checksums say the bytes are intact, not that they are benign) gives ``rule="crash"`` instead
    of taking this process down. Never raises for a bad binary (only for a bad target or a missing
    runtime). ``"driver-jit"``: it loaded, but the driver compiled IR (see :mod:`kernbin._jit`).
    """
    from ._fs import FileRefused
    device = _device(target)
    result = {"target": str(device.target), "device": device.id.describe(), "ok": False, "verdict": "gate",
              "reason": "", "rule": "", "member": None, "kernels": []}
    try:
        native = read_native(native, trusted_keys).verify()     # the embedded IR too: a fallback needs it
        payload, fit = _gate(device, native)
        result["member"] = fit.member
    except (InvalidBinary, IncompatibleBinary) as e:
        result.update(reason=e.reason, rule=e.rule)
        return result
    except FileRefused as e:
        result.update(reason=e.reason, rule=e.rule)
        return result
    if isolate:
        result.update(_probe_in_child(native, str(device.target)))
        return _jit.check_verdict(device, result, fit, strict)
    return _jit.check_verdict(device, {**result, **_probe(device, native, payload)}, fit, strict)


def _probe(device, native: NativeBinary, payload: bytes) -> dict:
    """The runtime's part of :func:`check`: load and create every kernel."""
    try:
        module = device.load_native(native, payload)
        kernels = [{"name": n, **module.kernel(n).attributes} for n in module.kernel_names]
    except OfflineTarget as e:
        return {"reason": str(e), "rule": "offline"}
    except KernbinError as e:
        return {"verdict": "driver", "reason": str(e), "rule": getattr(e, "code_name", None) or "driver"}
    return {"ok": True, "verdict": "native", "kernels": kernels, "driver_jit": module.driver_jit}


_probes: dict[str, dict] = {}


def _remembered_probe(device, native: NativeBinary) -> dict:
    """The isolated probe's verdict for these bytes on this device: from memory, from the cache
    directory (``probes/``, one small JSON file per binary and device), or probed now and stored."""
    import hashlib
    import json
    from . import paths
    from ._fs import atomic_write, read_regular_file
    key = hashlib.sha256(b"\0".join([native.sha256.encode(), device.id.fingerprint.encode(),
                                     device.toolchain.key().encode()])).hexdigest()
    got = _probes.get(key)
    if got is not None:
        return got
    folder = os.path.join(paths.cache_dir(), "probes")
    path = os.path.join(folder, key + ".json")
    try:
        got = json.loads(read_regular_file(path, 1 << 16, what="probe record"))
        if not isinstance(got, dict) or got.get("verdict") not in ("native", "driver"):
            got = None
    except (OSError, ValueError, KernbinError):
        got = None
    if got is None:
        got = {k: v for k, v in _probe_in_child(native, str(device.target)).items()
               if k in ("verdict", "rule", "reason", "ok")}
        got.setdefault("verdict", "native" if got.get("ok") else "driver")
        if got["verdict"] in ("native", "driver"):
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                atomic_write(path, json.dumps(got).encode())
            except OSError:
                pass                    # remembered in memory only
    _probes[key] = got
    return got


def _probe_in_child(native: NativeBinary, target: str) -> dict:
    import signal
    import subprocess
    import sys
    import json
    try:
        env = {k: v for k, v in os.environ.items() if k != "KERNBIN_TRUSTED_KEYS"}   # verified here already
        p = subprocess.run([sys.executable, "-m", "kernbin._probe", target], input=native.to_bytes(),
                           capture_output=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return {"verdict": "driver", "rule": "timeout", "reason": "the runtime did not finish loading in 600 s"}
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        return {"verdict": "driver", "rule": "crash",
                "reason": f"the runtime crashed ({name}) loading these bytes: they are intact but not loadable"}
    try:
        return json.loads(p.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return {"verdict": "driver", "rule": "probe", "reason": f"the load probe failed: {tail[0]}"}


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


# -- bundles -------------------------------------------------------------------------------------

def open_bundle(path, *, trusted_keys=None, require_signature: bool | None = None):
    """Open a bundle file (:class:`kernbin.bundle.Bundle`): maps it, parses the manifest only.
    ``bundle.load(name, target)`` picks the entry with the device's backend (``can_run``), else
    rebuilds from the bundle's IR. With trusted keys (argument or ``KERNBIN_TRUSTED_KEYS``) the
    bundle must be signed by one of them."""
    from .bundle import Bundle
    return Bundle(path, trusted_keys=trusted_keys, require_signature=require_signature, loader=load_from_bundle)


class BundleChoice(NamedTuple):
    """A bundle kernel's entry, verified and gated for a device, not loaded yet (see
    :func:`gate_from_bundle`): ``device.load_native(native, payload)`` loads it."""
    native: NativeBinary
    payload: bytes
    fit: Any
    choice: dict


def gate_from_bundle(bundle, name: str, target="opencl:cpu") -> BundleChoice:
    """Everything :func:`load_from_bundle` does before the runtime sees the bytes: choose the best
    entry for the device, verify its blob, gate it. Raises :class:`IncompatibleBinary` (no entry
    fits: ``rule="no-entry"``) or :class:`InvalidBinary` (the chosen blob is damaged). Many kernels
    can be gated in one pass this way and loaded later, one by one (the Triton launcher does)."""
    device = _device(target)
    entry, fit, reasons = bundle.choose(name, device)
    if entry is None:
        why = "; ".join(r for r in reasons if not r.endswith("fits") and "fits (" not in r) or "no native entry"
        raise bundle.no_entry(name, device, why)
    native = bundle.native(entry, with_ir=False)
    payload, fit = _gate(device, native, fit)
    return BundleChoice(native, payload, fit, {"entry": entry.target, "index": entry.index, "source": "native",
                                               "reasons": reasons})


def load_gated(device, gated: BundleChoice):
    """Load what :func:`gate_from_bundle` verified and gated (the runtime may still refuse it:
    :class:`RuntimeAPIError`)."""
    module = device.load_native(gated.native, gated.payload)
    module.member = gated.fit.member
    module.bundle_choice = gated.choice
    return _jit.report_driver_jit(module, gated.fit)


def load_from_bundle(bundle, name: str, target="opencl:cpu", *, fallback: bool = True, cache=None):
    """The wiring behind ``Bundle.load``: choose, verify, gate, load; else rebuild from the IR with
    the recorded options through the cache (the rebuilt binary is stored there, not in the bundle)."""
    device = _device(target)
    try:
        return load_gated(device, gate_from_bundle(bundle, name, device))
    except (InvalidBinary, IncompatibleBinary, RuntimeAPIError) as e:
        if not fallback:
            raise
        failed = e
    entry, reasons = bundle.select(name, device)          # again, for the reasons (entries are memoised)
    tried = [f"{entry.target}: {failed}"] if entry is not None else []
    why = "; ".join(tried + [r for r in reasons if not r.endswith("fits") and "fits (" not in r]) or "no native entry"
    ir = bundle.ir(name)
    if ir is None or not fallback or ir.kind not in device.backend.ir_kinds:
        if ir is not None and ir.kind not in device.backend.ir_kinds:
            why += f"; its IR is {ir.kind}, which {device.backend.name} does not build"
        raise bundle.no_entry(name, device, why)
    entries = bundle.entries(name)
    options = entries[0].info.options if entries else None
    key = ("bundle:" + why, ir.sha256)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"kernbin: bundle kernel {name!r}: rebuilding from IR for {device.target}: {why}",
                      FallbackWarning, stacklevel=3)
    native = get_or_build(ir, device, options, cache=cache)
    module = _load_checked(device, native)
    module.source, module.fallback_reason = "ir", why
    module.bundle_choice = {"entry": None, "index": None, "source": "ir", "reasons": reasons}
    return module


def create_bundle(out, inputs, targets, options: "BuildOptions | str | None" = None, *, grf: str | None = None,
                  spill_threshold: int | None = None, keep_ir: bool = True, names=None, jobs: int | None = None,
                  use_cache: bool = True, sign_key=None, add_to: str | None = None, progress=None,
                  executor=None) -> dict:
    """Build every input (IR file or object) for every target (through the cache, all of them in
    parallel) and write one bundle at ``out``; with ``add_to`` the kernels and targets are added to
    that bundle's (same kernel name: same IR required; same target: replaced). Returns
    ``{name: {target: cache_hit}}``. ``executor`` says where the builds run (``"process"``, the
    default; ``"ray"`` or ``"ray=ADDRESS"``: see :func:`build_many`). When a build fails, the others
    still run to their end (and are cached), the first failure is raised and no bundle is written."""
    from .bundle import read_all, write_bundle
    from .executors import BuildJob
    kernels = read_all(add_to) if add_to else {}
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
