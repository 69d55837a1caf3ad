"""Register-file (GRF) policy: which register-file flag to build with, and which result wins.

Modes (``--grf``):

``default``  build as the caller asked; no register-file flag is added;
``small``    add the backend's small-register-file flag (128 GRF on Xe-HPC/Xe-HPG);
``large``    add the backend's large-register-file flag (256 GRF);
``auto``     build with the default register file; when the kernels spill more than
             ``spill_threshold`` bytes, build again with the large register file and
             keep the build that spills fewer bytes (the default one on a tie: the
             large register file halves the hardware threads per EU, so it must buy
             something to be worth it).

The threshold's unit is **bytes of spill as the compiler reports them** (IGC's
"spilled around N" for ocloc, ``spillMemSize`` for Level Zero), summed over the
kernels of the module. Default **0**: any spill is worth one more build. This is the
rule Triton's XPU backend applies (any "spilled" in the log), and kernbin runs it ahead
of time, where a second build costs well under a second and a spill costs every launch;
unlike Triton, the retry only wins when it actually spills less.

A flag is spelled once: options that already carry a register-file flag are refused
when a mode other than ``default`` is asked for. The effective options (with the flag)
are recorded in ``BuildInfo.options``, so any later rebuild from IR uses the same flags;
the request (``extra["requested_options"]``, ``extra["policy"]``) keys the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

from .artifact import NativeBinary
from .errors import KernbinError

__all__ = ["GRF_MODES", "GrfPolicy", "DEFAULT_SPILL_THRESHOLD", "spill_bytes", "build_with_policy"]

GRF_MODES = ("default", "small", "large", "auto")
DEFAULT_SPILL_THRESHOLD = 0
#: every spelling of a register-file flag kernbin knows, to refuse doubled flags
_ALL_GRF_FLAGS = ("-cl-intel-128-GRF-per-thread", "-cl-intel-256-GRF-per-thread",
                  "-cl-intel-enable-auto-large-GRF-mode", "-ze-opt-large-register-file",
                  "-ze-opt-small-register-file", "-ze-exp-register-file-size", "-ze-opt-auto-register-file")


@dataclass(frozen=True)
class GrfPolicy:
    mode: str = "default"
    spill_threshold: int = DEFAULT_SPILL_THRESHOLD

    def __post_init__(self):
        if self.mode not in GRF_MODES:
            raise KernbinError(f"bad register-file mode {self.mode!r} (use one of {', '.join(GRF_MODES)})")
        if not isinstance(self.spill_threshold, int) or self.spill_threshold < 0:
            raise KernbinError(f"spill threshold must be a non-negative number of bytes, not {self.spill_threshold!r}")

    def key(self) -> str:
        """What the cache key records ("" for the default mode)."""
        if self.mode == "default":
            return ""
        if self.mode == "auto":
            return f"grf=auto;spill_threshold={self.spill_threshold}"
        return f"grf={self.mode}"


def spill_bytes(native: NativeBinary) -> int:
    return sum(int(k.attributes.get("spill_bytes", 0)) for k in native.info.kernels)


def _with_flag(options: str, flag: str) -> str:
    return f"{options} {flag}".strip()


def _annotate(native: NativeBinary, policy: GrfPolicy, requested: str, tried: list) -> NativeBinary:
    if policy.mode == "default":
        return native
    extra = dict(native.info.extra)
    extra.update(policy=policy.key(), requested_options=requested,
                 grf={"mode": policy.mode, "spill_threshold": policy.spill_threshold, "tried": tried})
    return replace(native, info=replace(native.info, extra=extra))


def build_with_policy(build: Callable[[str], NativeBinary], options: str, policy: GrfPolicy,
                      flags: Mapping[str, str] | None, what: str = "this target") -> NativeBinary:
    """Build through ``build(options)`` under ``policy``. ``flags`` maps ``small``/``large`` to the
    backend's spelling; None when the backend has no register-file modes."""
    if policy.mode == "default":
        return build(options)
    if not flags:
        raise KernbinError(f"--grf {policy.mode}: {what} has no register-file modes (use --grf default)")
    doubled = [f for f in _ALL_GRF_FLAGS if f in options.split()]
    if doubled:
        raise KernbinError(f"options already carry a register-file flag ({' '.join(doubled)}); "
                           f"choose the register file with --grf only")

    def attempt(mode: str) -> tuple[NativeBinary, dict]:
        opts = options if mode == "default" else _with_flag(options, flags[mode])
        nb = build(opts)
        scratch = sum(int(k.attributes.get("scratch_size", 0)) for k in nb.info.kernels)
        return nb, {"grf": mode, "options": opts, "spill_bytes": spill_bytes(nb), "scratch_size": scratch}

    if policy.mode in ("small", "large"):
        nb, rec = attempt(policy.mode)
        return _annotate(nb, policy, options, [rec])
    first, rec1 = attempt("default")
    if rec1["spill_bytes"] <= policy.spill_threshold:
        rec1["chosen"] = True
        return _annotate(first, policy, options, [rec1])
    second, rec2 = attempt("large")
    winner = second if rec2["spill_bytes"] < rec1["spill_bytes"] else first
    (rec2 if winner is second else rec1)["chosen"] = True
    return _annotate(winner, policy, options, [rec1, rec2])
