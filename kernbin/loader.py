"""What loads: the one place where verified bytes meet a device (one gate for every backend), the
fallback to the IR, and bundle loads (one kernel, or many in one pass).

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
import sys
import warnings
from dataclasses import replace
from typing import Any, NamedTuple

from . import _jit
from .artifact import NativeBinary
from .backends import open_device
from .bundle import Bundle
from .errors import (FallbackWarning, IncompatibleBinary, InvalidBinary, KernbinError, OfflineTarget,
                     RuntimeAPIError, SignatureError)
from .ir import IR, read_ir
from .trust import keys_in_force, read_native

__all__ = ["load", "check", "check_entry", "open_bundle", "OpenBundle", "choose_entry", "gate_from_bundle", "load_gated",
           "load_from_bundle", "load_many", "BundleChoice"]

_device = open_device


_warned: set[tuple[str, str]] = set()


def _warn(message: str) -> None:
    """A :class:`FallbackWarning` attributed to the first caller outside kernbin (whatever path led
    here), so that filters on the caller's module apply."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("kernbin."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FallbackWarning, stacklevel=level)


def _fallback(device, ir: IR | None, info, reason: str, error: Exception):
    """Rebuild from the IR with the recorded flags (and keep the recorded request)."""
    if ir is None:
        raise error
    key = (reason, ir.sha256)
    if key not in _warned:
        _warned.add(key)
        _warn(f"kernbin: rebuilding from IR for {device.target}: {reason}")
    from .builder import _stamp
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
    the verdict already reached on these very requirements (a bundle's choice), not asked again.
    The gate reads ``native.requires`` (and who built it), never the rest of the build info."""
    if fit is None:
        fit = device.backend.can_run(native, device)
    if not fit.ok:
        raise IncompatibleBinary(fit.reason, rule=fit.rule or "incompatible", requires=native.requires,
                                 device=device.id)
    return device.payload(native, fit), fit


def _load_checked(device, native: NativeBinary, strict: bool | None = None):
    payload, fit = _gate(device, native)
    if fit.rule:                        # a fit with a rule is a possible driver JIT (kernbin._jit)
        _jit.refuse_possible_jit(device, fit, strict)
    module = device.load_native(native, payload)
    if fit.member is not None:
        module.member = fit.member
    if fit.rule or module.driver_jit is not None:
        _jit.report_driver_jit(module, fit, strict)
    return module


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
        native = read_native(native, keys_in_force(trusted_keys))
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
    if given_ir is not None and given_ir.sha256 != native.ir_sha256:
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
    try:
        native = read_native(native, keys_in_force(trusted_keys))
    except (InvalidBinary, FileRefused) as e:
        return {**_check_result(device), "reason": e.reason, "rule": e.rule}
    return _check_verified(device, native, isolate, strict)


def check_entry(bundle: Bundle, entry, target="opencl:cpu", *, isolate: bool = False,
                strict: bool | None = None) -> dict:
    """:func:`check` for one entry of an open bundle (``kernbin check BUNDLE``): its bytes are vouched
    for by the bundle, whose signature was verified against the keys in force when it was opened
    (an entry alone carries no signature of its own)."""
    device = _device(target)
    try:
        _require_trusted(bundle)
        if not any(e is entry for e in bundle.entries(entry.kernel)):
            raise KernbinError(f"entry {entry!r} is not one of this bundle's")
        native = bundle.native(entry, with_ir=False)
    except InvalidBinary as e:
        return {**_check_result(device), "reason": e.reason, "rule": e.rule}
    return _check_verified(device, native, isolate, strict)


def _check_result(device) -> dict:
    return {"target": str(device.target), "device": device.id.describe(), "ok": False, "verdict": "gate",
            "reason": "", "rule": "", "member": None, "kernels": []}


def _check_verified(device, native: NativeBinary, isolate: bool, strict: bool | None) -> dict:
    """The gate and the runtime's part of :func:`check`, for bytes whose trust is settled."""
    result = _check_result(device)
    try:
        native.verify()                 # the build info and the embedded IR too: a fallback needs it
        payload, fit = _gate(device, native)
        result["member"] = fit.member
    except (InvalidBinary, IncompatibleBinary) as e:
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


def open_bundle(path, *, trusted_keys=None, require_signature: bool | None = None) -> "OpenBundle":
    """Open a bundle file for loading (:class:`OpenBundle`): parses the header and the manifest only.
    ``bundle.load(name, target)`` picks the entry with the device's backend (``can_run``), else
    rebuilds from the bundle's IR; ``bundle.load_many(names, target)`` does it for many kernels in
    one pass. With trusted keys (argument or ``KERNBIN_TRUSTED_KEYS``) the bundle must be signed by
    one of them, and a fallback never reads a cache entry (it builds from the bundle's signed IR)."""
    return OpenBundle(path, trusted_keys=keys_in_force(trusted_keys), require_signature=require_signature)


class OpenBundle(Bundle):
    """A :class:`~kernbin.bundle.Bundle` opened for loading: the bundle hands out candidate entries
    and bytes, the loader (this module) chooses, gates and loads."""

    def load(self, name: str, target="opencl:cpu", *, fallback: bool = True, cache=None):
        """Load kernel ``name`` on ``target``: the best native entry (verified, gated), else a rebuild
        from the bundle's IR with the recorded options, else :class:`IncompatibleBinary` naming the
        targets held and the device found. The choice and why is on ``module.bundle_choice``."""
        return load_from_bundle(self, name, target, fallback=fallback, cache=cache)

    def load_many(self, names=None, target="opencl:cpu", *, fallback: bool = True, cache=None) -> dict:
        """``{name: Module}`` for many kernels (default: all): see :func:`load_many`."""
        return load_many(self, names, target, fallback=fallback, cache=cache)

    def select(self, name: str, device):
        """The entry :meth:`load` would take on ``device`` and why each entry was or was not taken."""
        entry, _, reasons = choose_entry(self, name, _device(device))
        return entry, reasons


def choose_entry(bundle: Bundle, name: str, device):
    """The best entry of kernel ``name`` for ``device``, its verdict (a ``Fit``) and, for every entry,
    why it was or was not taken: ``(entry, fit, reasons)``. Preference: the device's own toolchain
    first (it made those bytes), then single-target binaries over fat ones, then the bundle's order."""
    fits, reasons = [], []
    can_run = device.backend.can_run
    for e in bundle.entries(name):
        try:
            fit = can_run(e, device)
        except KernbinError as err:           # a malformed requirement: not this entry
            reasons.append(f"{e.target}: {err}")
            continue
        if fit.ok:
            fits.append((e, fit))
            reasons.append(f"{e.target}: fits" + (f" ({fit.member})" if fit.member else ""))
        else:
            reasons.append(f"{e.target}: {fit.reason}")
    if not fits:
        return None, None, reasons
    if len(fits) == 1:                        # nothing to rank (the common case)
        return fits[0][0], fits[0][1], reasons
    own_key = device.toolchain.key()
    e, fit = min(fits, key=lambda t: (0 if t[0].toolchain_key == own_key else 1,
                                      1 if t[0].requires.kind.endswith("-fat") else 0, t[0].index))
    return e, fit, reasons


def _bundle_keys(bundle: Bundle):
    """The keys a bundle's bytes answer to: those it was opened with, else the environment's."""
    return bundle.trusted_keys if bundle.trusted_keys is not None else keys_in_force(None)


def _require_trusted(bundle: Bundle) -> None:
    """Under keys in force, a bundle's bytes reach a driver only when its signature was verified
    against them when it was opened (``signed_by``): an unsigned bundle opened with
    ``require_signature=False``, or before the keys were set, is refused here."""
    if bundle.signed_by is None and _bundle_keys(bundle) is not None:
        raise SignatureError("unsigned", f"bundle {os.path.basename(bundle.path)!r} was not verified against "
                                         f"the trusted keys in force (unsigned, or opened without a signature "
                                         f"check): nothing in it is loaded")


def _no_entry(bundle: Bundle, name: str, device, why: str) -> IncompatibleBinary:
    """The error for a kernel with nothing that runs on ``device`` and no IR to rebuild from."""
    return IncompatibleBinary(f"bundle {os.path.basename(bundle.path)!r} kernel {name!r} has nothing for "
                              f"{device.target} ({device.id.describe()}); it holds "
                              f"{', '.join(bundle.targets(name)) or 'no targets'}: {why}",
                              rule="no-entry", device=device.id)


def _refusals(reasons) -> list:
    return [r for r in reasons if not r.endswith("fits") and "fits (" not in r]


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
    _require_trusted(bundle)
    entry, fit, reasons = choose_entry(bundle, name, device)
    if entry is None:
        raise _no_entry(bundle, name, device, "; ".join(_refusals(reasons)) or "no native entry")
    native = NativeBinary._of(bundle.blob(entry.blob), entry._info, None)
    return BundleChoice(native, device.payload(native, fit), fit,
                        {"entry": entry.target, "index": entry.index, "source": "native", "reasons": reasons})


def load_gated(device, gated: BundleChoice):
    """Load what :func:`gate_from_bundle` verified and gated (the runtime may still refuse it:
    :class:`RuntimeAPIError`)."""
    if gated.fit.rule:
        _jit.refuse_possible_jit(device, gated.fit)
    module = device.load_native(gated.native, gated.payload)
    if gated.fit.member is not None:
        module.member = gated.fit.member
    module.bundle_choice = gated.choice
    if gated.fit.rule or module.driver_jit is not None:
        _jit.report_driver_jit(module, gated.fit)
    return module


def load_from_bundle(bundle, name: str, target="opencl:cpu", *, fallback: bool = True, cache=None):
    """Choose, verify, gate, load; else rebuild from the IR with the recorded options (through the
    cache; under trusted keys built here from the bundle's signed IR, no cache entry read)."""
    device = _device(target)
    try:
        return load_gated(device, gate_from_bundle(bundle, name, device))
    except SignatureError:
        raise                           # an untrusted bundle: not its IR either
    except (InvalidBinary, IncompatibleBinary, RuntimeAPIError) as e:
        if not fallback:
            raise
        return _bundle_fallback(bundle, name, device, e, cache)


def _bundle_fallback(bundle, name: str, device, failed: Exception, cache):
    entry, _, reasons = choose_entry(bundle, name, device)     # again, for the reasons (entries are memoised)
    tried = [f"{entry.target}: {failed}"] if entry is not None else []
    why = "; ".join(tried + _refusals(reasons)) or "no native entry"
    ir = bundle.ir(name)
    if ir is None or ir.kind not in device.backend.ir_kinds:
        if ir is not None:
            why += f"; its IR is {ir.kind}, which {device.backend.name} does not build"
        raise _no_entry(bundle, name, device, why)
    entries = bundle.entries(name)
    options = entries[0].info.options if entries else None
    key = ("bundle:" + why, ir.sha256)
    if key not in _warned:
        _warned.add(key)
        _warn(f"kernbin: bundle kernel {name!r}: rebuilding from IR for {device.target}: {why}")
    module = _rebuilt(device, ir, options, cache, trusted=_bundle_keys(bundle) is not None)
    module.source, module.fallback_reason = "ir", why
    module.bundle_choice = {"entry": None, "index": None, "source": "ir", "reasons": reasons}
    return module


def _rebuilt(device, ir, options, cache, *, trusted: bool):
    """A module rebuilt from ``ir`` with ``options``. Under trust (keys in force) nothing is read from
    the cache: the binary is built here, from IR that is itself trusted, and only stored. Otherwise
    through the cache; a cached entry the device refuses (intact but not loadable: resealed, or from
    a toolchain that lies about itself) is evicted and counted, and the rebuild replaces it."""
    from .builder import _build_on, default_cache
    from .cache import cache_key
    from .options import BuildOptions
    opts = BuildOptions.of(options)
    cache = cache or default_cache()
    key = cache_key(ir.sha256, device.toolchain, device.id.fingerprint, opts)
    if trusted:
        native = _build_on(device, ir, opts)
        try:
            cache.put(key, native)
        except (OSError, KernbinError):
            pass                        # a cache we cannot write: the module is loaded all the same
        return _load_checked(device, native)
    native, hit = cache.get_or_build(key, lambda: _build_on(device, ir, opts))
    try:
        return _load_checked(device, replace(native, ir=ir))
    except (InvalidBinary, IncompatibleBinary, RuntimeAPIError):
        if not hit:
            raise
    cache.reject(key)
    native = _build_on(device, ir, opts)     # not get_or_build: a remote tier would serve the same bytes
    cache.put(key, native)                   # (and this overwrites them there)
    return _load_checked(device, native)


def load_many(bundle, names=None, target="opencl:cpu", *, fallback: bool = True, cache=None) -> dict:
    """``{name: Module}`` for many kernels of a bundle (default: all of them), every one ready.

    One pass reads what the gate needs of every entry (one typed decode of the manifest) and gates
    each distinct requirement once; then the chosen blobs' digests are all checked in one warm pass
    before the first driver call, so the driver's calls are not interleaved with kernbin's checks;
    then the driver loads them one after the other. A kernel whose entry is damaged, refused or
    rejected by the runtime takes the path of :meth:`OpenBundle.load` (fallback to its IR, with the
    reason); the others are not held up. With ``fallback=False`` a kernel with no fitting entry or a
    damaged blob raises before the driver has loaded anything."""
    device = _device(target)
    _require_trusted(bundle)
    names = bundle.names if names is None else tuple(names)
    if len(names) > 1:
        bundle.read_all_entries()
    return _load_many(bundle, names, device, fallback, cache)


def _load_many(bundle, names, device, fallback: bool, cache) -> dict:
    can_run, verdicts, chosen, read = device.backend.can_run, {}, [], bundle._entries
    for name in names:
        entries = read.get(name) or bundle.entries(name)
        if len(entries) == 1:                         # the common case: one entry per target held
            e = entries[0]
            info = e.pending
            key = (id(info.requires), info._tc if type(info._tc) is bytes else id(info._tc))
            fit = verdicts.get(key)
            if fit is None:
                try:
                    fit = verdicts[key] = can_run(e, device)
                except KernbinError:
                    fit = None
            if fit is not None and fit.ok:
                chosen.append((name, e, fit, None))
                continue
        chosen.append((name, *choose_entry(bundle, name, device)))
    blobs: dict = {}
    section = bundle._c.section                         # (entries name only blobs the file holds)
    for _, entry, _, _ in chosen:                       # bulk digests, before any driver call
        if entry is not None and entry.blob not in blobs:
            try:
                blobs[entry.blob] = section(entry.blob)
            except InvalidBinary:
                try:
                    bundle.blob(entry.blob)             # the bundle's own error for it
                except InvalidBinary as e:
                    blobs[entry.blob] = e
    if not fallback:                                    # nothing is loaded when anything is refused
        for name, entry, _, reasons in chosen:
            if entry is None:
                raise _no_entry(bundle, name, device, "; ".join(_refusals(reasons)) or "no native entry")
            if type(blobs[entry.blob]) is not bytes:
                raise blobs[entry.blob]
    out = {}
    load_native, payload_of, of = device.load_native, device.payload, NativeBinary._of
    for name, entry, fit, reasons in chosen:
        data = blobs.get(entry.blob) if entry is not None else None
        if type(data) is bytes:
            native = of(data, entry._info, None)
            if fit.rule:
                _jit.refuse_possible_jit(device, fit)
            try:
                module = load_native(native, payload_of(native, fit))
            except (InvalidBinary, RuntimeAPIError) as e:
                failed = e
            else:
                if fit.member is not None:
                    module.member = fit.member
                if fit.rule or module.driver_jit is not None:
                    _jit.report_driver_jit(module, fit)
                module._choice = (entry.target, entry.index, reasons, fit.member)
                out[name] = module
                continue
        else:
            failed = data if data is not None else _no_entry(bundle, name, device,
                                                              "; ".join(_refusals(reasons)) or "no native entry")
        if not fallback:
            raise failed
        out[name] = _bundle_fallback(bundle, name, device, failed, cache)
    return out
