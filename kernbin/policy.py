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

Flag spellings belong to the backend (``Backend.register_file_flags`` for the flags it adds,
``Backend.register_file_spellings`` for every spelling that sets the register file there,
``=value`` forms included): the policy asks for them and never spells a flag itself. A flag
is given once: flags that already set the register file are refused when a mode other than
``default`` is asked for. The flags the compiler received are recorded in ``BuildInfo.flags``
(a rebuild from the IR uses exactly those); the request, :class:`~kernbin.options.BuildOptions`,
is in ``BuildInfo.options`` and keys the cache; the attempts are in ``BuildInfo.register_file``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

from .artifact import NativeBinary
from .errors import OptionsError
from .options import DEFAULT_SPILL_THRESHOLD, REGISTER_FILE_MODES, BuildOptions

__all__ = ["REGISTER_FILE_MODES", "DEFAULT_SPILL_THRESHOLD", "spill_bytes", "build_with_policy",
           "register_file_flags_in"]


def spill_bytes(native: NativeBinary) -> int:
    return sum(int(k.attributes.get("spill_bytes", 0)) for k in native.info.kernels)


def register_file_flags_in(flags, spellings) -> list[str]:
    """The flags among ``flags`` that set the register file, by name (``-x=128`` is ``-x``)."""
    names = set(spellings)
    return [f for f in flags if f.split("=", 1)[0] in names]


def _annotate(native: NativeBinary, options: BuildOptions, tried: list) -> NativeBinary:
    record = {"mode": options.register_file, "spill_threshold": options.spill_threshold, "tried": tried}
    return replace(native, info=replace(native.info, options=options, register_file=record))


def build_with_policy(build: Callable[[tuple], NativeBinary], options: BuildOptions,
                      flags: Mapping[str, str] | None, spellings=(), what: str = "this target") -> NativeBinary:
    """Build through ``build(flags)`` under ``options.register_file``. ``flags`` maps ``small`` /
    ``large`` to the backend's spelling (None or empty when it has no register-file modes);
    ``spellings`` is every flag name that sets the register file on that backend."""
    mode = options.register_file
    if mode == "default":
        return replace_options(build(options.flags), options)
    if not flags:
        raise OptionsError("register_file", f"--grf {mode}: {what} has no register-file modes (use --grf default)")
    doubled = register_file_flags_in(options.flags, set(spellings) | set(v.split("=", 1)[0] for v in flags.values()))
    if doubled:
        raise OptionsError("flags", f"options already set the register file ({' '.join(doubled)}); "
                                    f"choose it with --grf only")

    def attempt(m: str) -> tuple[NativeBinary, dict]:
        fl = options.flags if m == "default" else options.flags + (flags[m],)
        nb = build(fl)
        scratch = sum(int(k.attributes.get("scratch_size", 0)) for k in nb.info.kernels)
        return nb, {"grf": m, "flags": list(fl), "spill_bytes": spill_bytes(nb), "scratch_size": scratch}

    if mode in ("small", "large"):
        nb, rec = attempt(mode)
        rec["chosen"] = True
        return _annotate(nb, options, [rec])
    first, rec1 = attempt("default")
    if rec1["spill_bytes"] <= options.spill_threshold:
        rec1["chosen"] = True
        return _annotate(first, options, [rec1])
    second, rec2 = attempt("large")
    winner = second if rec2["spill_bytes"] < rec1["spill_bytes"] else first
    (rec2 if winner is second else rec1)["chosen"] = True
    return _annotate(winner, options, [rec1, rec2])


def replace_options(native: NativeBinary, options: BuildOptions) -> NativeBinary:
    """The binary with ``options`` recorded as the request (backends record flags only)."""
    if native.info.options == options:
        return native
    return replace(native, info=replace(native.info, options=options))
