"""What the Intel GPU backends (ocloc, Level Zero, OpenCL on an Intel GPU) share: the
register-file flag spellings IGC understands, and the zebin runs-on gate.

All three hand flags to the same compiler (IGC), so every spelling below sets the register
file on each of them; each backend still says which flag it adds for ``small``/``large``.
"""

from __future__ import annotations

from ..formats import zebin as zefmt
from .base import Fit

__all__ = ["REGISTER_FILE_SPELLINGS", "OCLOC_REGISTER_FILE_FLAGS", "LEVEL_ZERO_REGISTER_FILE_FLAGS",
           "OPENCL_REGISTER_FILE_FLAGS", "can_run", "payload"]

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


def can_run(info, device) -> Fit:
    """The zebin rule (:func:`kernbin.formats.zebin.intel_gpu_can_run`) against a live device.

    ``device.id.facts["ip_version"]`` is the device's IP; the ``.ze_info`` version its runtime
    decodes is asked of ``device.zebin_decoder_version()`` only when the binary was made by
    another toolchain than the device's own (what a driver made itself it can decode)."""
    ip = device.id.facts.get("ip_version")
    decoder = None
    if info.toolchain_key != device.toolchain.key():
        decoder = device.zebin_decoder_version()
    ok, rule, reason, member = zefmt.intel_gpu_can_run(info.requires, ip, decoder)
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
