"""Driver JIT: when a "native" load is really a compile in the driver, and what kernbin does then.

A native binary can still be JIT-compiled by the driver: Intel's runtime recompiles a zebin from
the IR found inside it when its own checks fail, and says so only in the build log
(``-Wrecompiled-from-ir``); a CUDA fatbin whose only fitting member is PTX is compiled by the
driver at load. Backends find out (the Level Zero backend reads the build log after every native
load and sets ``module.driver_jit``; the gate's verdict says when the member it picked is PTX:
``Fit(ok=True, rule="driver-jit")``). This module owns what happens next, for every backend:

- a driver JIT (``module.driver_jit``, a reason) gives one :class:`~kernbin.errors.FallbackWarning`
  per (target, reason) and the module is returned;
- in strict mode (``strict=True``, or ``KERNBIN_STRICT=1`` when ``strict`` is None) it is a
  :class:`~kernbin.errors.DriverJitError` (``rule="driver-jit"``) instead;
- a zebin that carries its IR (``Fit(ok=True, rule="embedded-ir")``: built before kernbin passed
  ocloc ``-exclude_ir``, or by a driver that embeds it) is only a *possible* JIT: it loads and
  :func:`check_verdict` reports the flag. On a device that reads the build log after a native load
  (``Device.reports_recompile``: Level Zero) the log then tells, so strict mode judges by it; on
  any other device strict mode refuses such bytes before the runtime sees them
  (``rule="embedded-ir"``), as nothing would show a recompile there.

``kernbin.api`` calls :func:`refuse_possible_jit` between the gate and the runtime,
:func:`report_driver_jit` for every module a native load returns and :func:`check_verdict` in
``check()``; nothing else decides.
"""

from __future__ import annotations

import os
import warnings

from .errors import DriverJitError, FallbackWarning, OptionsError

__all__ = ["STRICT_ENV", "strict_mode", "jit_of_fit", "refuse_possible_jit", "report_driver_jit", "check_verdict"]

STRICT_ENV = "KERNBIN_STRICT"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_warned: set[tuple[str, str]] = set()


def strict_mode(strict: bool | None = None) -> bool:
    """``strict`` when given, else ``KERNBIN_STRICT`` (1/true/yes/on or 0/false/no/off; anything
    else is an :class:`~kernbin.errors.OptionsError`)."""
    if strict is not None:
        return bool(strict)
    raw = os.environ.get(STRICT_ENV, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise OptionsError("strict", f"{STRICT_ENV}={raw!r}: use 1 or 0")


def jit_of_fit(fit) -> str | None:
    """The reason when the gate's verdict itself says the driver will JIT (a PTX member), else None."""
    if fit is not None and fit.ok and fit.rule == "driver-jit":
        return fit.reason or "the driver compiles IR at load"
    return None


def _possible(fit) -> str | None:
    if fit is not None and fit.ok and fit.rule == "embedded-ir":
        return fit.reason or "the binary carries IR the driver may recompile from"
    return None


def _unconfirmable(device, fit) -> str | None:
    """A possible JIT on a device whose load would not show whether it happened."""
    return None if device.reports_recompile else _possible(fit)


def refuse_possible_jit(device, fit, strict: bool | None = None) -> None:
    """Strict mode: raise :class:`DriverJitError` (``rule="embedded-ir"``) for bytes the gate let
    through as a possible driver JIT, before the runtime sees them, unless the device reads the
    build log after the load (then :func:`report_driver_jit` judges by it)."""
    possible = _unconfirmable(device, fit)
    if possible and strict_mode(strict):
        raise DriverJitError(possible, rule="embedded-ir", target=str(device.target))


def report_driver_jit(module, fit=None, strict: bool | None = None):
    """Apply the policy to a module a native load returned (``fit``: the gate's verdict for it).
    Returns the module; raises :class:`DriverJitError` in strict mode."""
    if getattr(module, "driver_jit", None) is None:
        module.driver_jit = jit_of_fit(fit)
    target = str(module.device.target)
    if strict_mode(strict):
        if module.driver_jit:
            raise DriverJitError(module.driver_jit, rule="driver-jit", target=target)
        possible = _unconfirmable(module.device, fit)
        if possible:
            raise DriverJitError(possible, rule="embedded-ir", target=target)
        return module
    if module.driver_jit:
        key = (target, module.driver_jit)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"kernbin: driver JIT on {target}: {module.driver_jit}", FallbackWarning, stacklevel=4)
    return module


def check_verdict(device, result: dict, fit, strict: bool | None = None) -> dict:
    """``check()``'s answer once the runtime loaded the bytes: ``result["driver_jit"]`` (from the
    probe) or a PTX member make it ``verdict="driver-jit"``, ``ok=False``, ``rule="driver-jit"``;
    a possible JIT (``rule="embedded-ir"``) stays ``native`` with the rule and reason set, and is
    ``driver-jit`` under strict mode where the device cannot show a recompile (whatever the runtime
    said: a strict load never hands it the bytes). Otherwise results where the runtime refused the
    bytes pass through."""
    jit = result.pop("driver_jit", None) or jit_of_fit(fit)
    possible = _possible(fit)
    if _unconfirmable(device, fit) and strict_mode(strict):     # a strict load refuses these before the runtime
        result.update(ok=False, verdict="driver-jit", rule="embedded-ir", reason=possible, kernels=[])
        return result
    if not result.get("ok"):
        return result
    if jit:
        result.update(ok=False, verdict="driver-jit", rule="driver-jit", reason=jit)
    elif possible:
        result.update(rule="embedded-ir", reason=possible)
    return result
