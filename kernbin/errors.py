"""One exception hierarchy for kernbin, rooted at :class:`KernbinError`.

Callers never need to parse a message: every error carries its facts as
attributes (byte offset, runtime call, result code number and name, build log).
"""

from __future__ import annotations

__all__ = [
    "KernbinError",
    "InvalidIR",
    "InvalidBinary",
    "IncompatibleBinary",
    "TargetError",
    "OptionsError",
    "KernelNotFound",
    "OfflineTarget",
    "SignatureError",
    "RuntimeNotFound",
    "RuntimeAPIError",
    "BuildError",
    "LaunchError",
    "DriverJitError",
    "KernbinWarning",
    "FallbackWarning",
]


class KernbinError(Exception):
    """Base class of every error kernbin raises on purpose."""


class InvalidIR(KernbinError):
    """The IR (SPIR-V, PTX) is malformed. ``offset`` is the byte offset of the problem."""

    def __init__(self, reason: str, offset: int | None = None):
        self.reason = reason
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"invalid IR{where}: {reason}")


class InvalidBinary(KernbinError):
    """A native-binary container (``.knb``) or device binary is malformed or fails its checksum.

    ``rule`` names the rule that failed (a short stable identifier such as ``"magic"`` or
    ``"section-digest"``; ``"device-binary"`` for the bytes inside). When the container's
    header and its embedded IR section were still intact, ``build_info`` and ``ir`` hold
    them so that a caller can rebuild from the IR.
    """

    def __init__(self, reason: str, *, rule: str = "invalid", build_info=None, ir=None):
        self.reason = reason
        self.rule = rule
        self.build_info = build_info
        self.ir = ir
        super().__init__(f"invalid native binary: {reason}")


class IncompatibleBinary(KernbinError):
    """A well-formed native binary whose requirements this device does not meet.

    ``rule`` names the requirement that failed (``"ip-version"``, ``"zebin-version"``,
    ``"backend"``, ``"driver"``, ...); ``requires`` is what the binary needs, ``device``
    the device's identity."""

    def __init__(self, reason: str, *, rule: str = "incompatible", requires=None, device=None):
        self.reason = reason
        self.rule = rule
        self.requires = requires
        self.device = device
        super().__init__(f"native binary does not fit this device: {reason}")


class SignatureError(InvalidBinary):
    """A container's signature is missing, malformed, wrong, or by a key not trusted.

    ``rule`` is one of :data:`SIGNATURE_RULES`; ``key_id`` is the signing key's id when the
    signature named one (None for "unsigned" and most "malformed-signature"). An
    :class:`~kernbin.errors.InvalidBinary`, so a loader treats the file as not loadable."""

    def __init__(self, rule: str, reason: str, *, key_id: str | None = None):
        super().__init__(f"[{rule}] {reason}", rule=rule)
        self.rule = rule
        self.key_id = key_id


class TargetError(KernbinError):
    """A target string that kernbin cannot parse or no backend serves. ``target`` is the text."""

    def __init__(self, message: str, target: str | None = None):
        self.target = target
        super().__init__(message)


class OptionsError(KernbinError):
    """Build options that are malformed or that a backend cannot honour. ``field`` names the
    option (``"flags"``, ``"register_file"``, ``"spill_threshold"``); ``backend`` is set when
    the problem is that backend's."""

    def __init__(self, field: str, reason: str, backend: str | None = None):
        self.field = field
        self.reason = reason
        self.backend = backend
        super().__init__(reason if backend is None else f"{backend}: {reason}")


class KernelNotFound(KernbinError):
    """A kernel name that the module does not define. ``available`` lists those it does."""

    def __init__(self, name: str, available=()):
        self.name = name
        self.available = tuple(available)
        super().__init__(f"no kernel {name!r} in module (kernels: {', '.join(self.available) or 'none'})")


class OfflineTarget(KernbinError):
    """An offline target (``ocloc:<device>``, ``cuda:sm_XY``) was asked to load or run code:
    it only builds. ``target`` names it."""

    def __init__(self, target: str, hint: str = ""):
        self.target = target
        super().__init__(f"{target} is an offline target: it builds binaries but cannot load them"
                         + (f"; {hint}" if hint else ""))


class RuntimeNotFound(KernbinError):
    """The runtime (or a device for it) is missing; the message says what to install."""


class RuntimeAPIError(KernbinError):
    """A runtime call failed. Carries the backend, the API call and the result code."""

    def __init__(self, backend: str, call: str, code: int | None, code_name: str | None,
                 message: str = "", log: str | None = None):
        self.backend = backend
        self.call = call
        self.code = code
        self.code_name = code_name
        self.log = log
        code_txt = f"{code_name} ({code})" if code_name else (str(code) if code is not None else "error")
        text = f"{backend}: {call} failed: {code_txt}"
        if message:
            text += f": {message}"
        super().__init__(text)


class BuildError(RuntimeAPIError):
    """A build from IR failed; ``log`` holds the compiler's build log, ``options`` the options."""
    options = ""                          # class defaults: an error rebuilt from data may lack them
    log = None

    def __init__(self, backend: str, call: str, code: int | None, code_name: str | None,
                 message: str = "", log: str | None = None, options: str = ""):
        self.options = options
        super().__init__(backend, call, code, code_name, message, log)

    def __str__(self) -> str:
        text = super().__str__()
        if self.options:
            text += f"\n  options: {self.options}"
        if isinstance(self.log, str) and self.log.strip():
            text += "\n  build log:\n" + "\n".join("    " + line for line in self.log.strip().splitlines())
        return text


class LaunchError(KernbinError):
    """A kernel launch was given arguments or sizes it cannot take."""


class DriverJitError(KernbinError):
    """Strict mode (``strict=True`` or ``KERNBIN_STRICT=1``): a "native" load was, or may be, a JIT
    compile in the driver. ``rule`` is ``"driver-jit"`` (the driver said it recompiled from IR, or
    the fat-binary member it uses is PTX) or ``"embedded-ir"`` (a zebin that carries its IR, which
    a driver recompiles from when its own checks fail); ``reason`` says which; ``target`` is the
    device's target."""

    def __init__(self, reason: str, *, rule: str = "driver-jit", target: str | None = None):
        self.reason = reason
        self.rule = rule
        self.target = target
        super().__init__(f"not a native load{f' on {target}' if target else ''}: {reason}")


class KernbinWarning(UserWarning):
    """Base class of kernbin's warnings."""


class FallbackWarning(KernbinWarning):
    """A native binary could not be used and kernbin rebuilt it from the IR, or the driver
    compiled IR instead of loading it natively (a driver JIT: ``module.driver_jit`` says why)."""
