"""What the Intel GPU backends (ocloc, Level Zero, OpenCL on an Intel GPU) share: the
register-file flag spellings IGC understands, the zebin runs-on gate, and how Intel's runtime
says it recompiled a native binary from IR (a driver JIT; :mod:`kernbin._jit` decides what then).

All three hand flags to the same compiler (IGC), so every spelling below sets the register
file on each of them; each backend still says which flag it adds for ``small``/``large``.
"""

from __future__ import annotations

import re

from ..artifact import BuildInfo
from ..formats import zebin as zefmt
from .base import Fit

__all__ = ["REGISTER_FILE_SPELLINGS", "OCLOC_REGISTER_FILE_FLAGS", "LEVEL_ZERO_REGISTER_FILE_FLAGS",
           "OPENCL_REGISTER_FILE_FLAGS", "can_run", "payload", "RECOMPILED_FROM_IR", "NO_RECOMPILE_WARNING",
           "recompiled_from_ir", "native_load_flags"]

#: every flag name (before any ``=value``) that sets the register file in IGC
REGISTER_FILE_SPELLINGS = ("-cl-intel-128-GRF-per-thread", "-cl-intel-256-GRF-per-thread",
                           "-cl-intel-enable-auto-large-GRF-mode", "-ze-opt-large-register-file",
                           "-ze-opt-small-register-file", "-ze-exp-register-file-size",
                           "-ze-opt-auto-register-file", "-ze-intel-128-GRF-per-thread",
                           "-ze-intel-256-GRF-per-thread", "-ze-intel-enable-auto-large-GRF-mode")
OCLOC_REGISTER_FILE_FLAGS = {"small": "-cl-intel-128-GRF-per-thread", "large": "-cl-intel-256-GRF-per-thread"}
#: -ze-opt-large-register-file is the Level Zero spelling of the 256-GRF mode
LEVEL_ZERO_REGISTER_FILE_FLAGS = {"small": "-ze-exp-register-file-size=128", "large": "-ze-opt-large-register-file"}
OPENCL_REGISTER_FILE_FLAGS = OCLOC_REGISTER_FILE_FLAGS

#: the warning Intel's runtime (NEO) writes into the build log when it rebuilt a native binary from
#: the IR inside it: "warning: module got recompiled from IR because provided native binary is
#: incompatible with underlying device and/or driver [-Wrecompiled-from-ir]"
RECOMPILED_FROM_IR = "-Wrecompiled-from-ir"
#: the build flag that makes NEO keep that warning out of the log: never passed on a native load
NO_RECOMPILE_WARNING = "-Wno-recompiled-from-ir"
_RECOMPILED = re.compile(r"-Wrecompiled-from-ir\b|recompiled from IR", re.IGNORECASE)
#: what :func:`can_run` says of a zebin that carries its IR (a possible driver JIT)
EMBEDDED_IR = ("the zebin carries its IR (.spv section): a driver whose own checks fail on the native code "
               "recompiles from it; rebuild it (kernbin passes ocloc -exclude_ir) to rule that out")


def recompiled_from_ir(log: str) -> str | None:
    """The build-log line in which the runtime says it recompiled from IR, or None."""
    for line in (log or "").splitlines():
        if _RECOMPILED.search(line):
            return line.strip()[:500]
    return None


def native_load_flags(flags) -> str:
    """The build flags for a native load: the recorded ones without :data:`NO_RECOMPILE_WARNING`,
    so that a recompile always shows in the build log."""
    return " ".join(f for f in flags if f != NO_RECOMPILE_WARNING)


def _build_info(info) -> BuildInfo:
    """The whole build info of what the gate was handed (a NativeBinary, a bundle entry, a BuildInfo):
    Intel loads read ``extra`` too, so they build it (a zebin load costs milliseconds anyway)."""
    return info if isinstance(info, BuildInfo) else info.info


def can_run(info, device) -> Fit:
    """The zebin rule (:func:`kernbin.formats.zebin.intel_gpu_can_run`) against a live device.

    ``device.id.facts["ip_version"]`` is the device's IP; the ``.ze_info`` version its runtime
    decodes is asked of ``device.zebin_decoder_version()`` only when the binary was made by
    another toolchain than the device's own (what a driver made itself it can decode).

    A single zebin whose build info says it carries its IR fits with ``rule="embedded-ir"``: a
    possible driver JIT (:mod:`kernbin._jit`). A fat archive's ``generic_ir`` never reaches the
    driver (only the chosen member does), so it is not one."""
    ip = device.id.facts.get("ip_version")
    decoder = None
    if info.toolchain_key != device.toolchain.key():
        decoder = device.zebin_decoder_version()
    ok, rule, reason, member = zefmt.intel_gpu_can_run(info.requires, ip, decoder)
    if ok and member is None and _build_info(info).extra.get("ir_embedded_in_binary") is True:
        return Fit(True, EMBEDDED_IR, "embedded-ir")        # loads; flagged as a possible driver JIT
    return Fit(ok, reason, rule, member)


def payload(binary: bytes, fit: Fit) -> bytes:
    """The zebin to load: the chosen fat-archive member, or the binary itself; checked to be
    an Intel GT ELF either way."""
    from ..errors import InvalidBinary
    if fit.member is not None:
        if not zefmt.is_fat(binary):
            raise InvalidBinary("requirements name a fat-archive member but the binary is not an archive",
                                rule="device-binary")
        members = zefmt.read_ar(binary)
        if fit.member not in members:
            raise InvalidBinary(f"fat archive has no member {fit.member!r}", rule="device-binary")
        binary = members[fit.member]
    if not zefmt.is_zebin(binary):
        raise InvalidBinary("not a zebin (ELF for Intel GT)", rule="device-binary")
    return binary
