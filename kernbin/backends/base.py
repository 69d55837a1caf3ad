"""The backend protocol: one :class:`Backend` per runtime, and the objects it hands out.

A backend module defines a :class:`Backend` subclass and is named by one line in
:mod:`kernbin.backends` (the registry). The contract:

``list_devices()``      every device the runtime sees, as :class:`DeviceInfo` (empty, never an
                        error, when the runtime or its devices are missing);
``open(target)``        a live :class:`Device` for a parsed target (shared within the process),
                        or :class:`~kernbin.errors.RuntimeNotFound`;
``can_run(info, dev)``  the runs-on rule: may these bytes run on this device? ``info`` is whatever
                        carries ``requires`` and ``toolchain_key`` (a :class:`~kernbin.artifact.NativeBinary`,
                        a bundle entry, a :class:`~kernbin.artifact.BuildInfo`): the gate never builds the
                        whole build info. Returns a :class:`Fit` (``ok, reason, rule, member``).
                        It reads ``info.requires`` and the device's identity; the toolchain only to
                        tell the device's own binaries (a driver update alone does not invalidate one);
``register_file_flags`` / ``register_file_spellings``: how this backend spells register-file
                        modes (asked for by :mod:`kernbin.policy`; empty when it has none).

A :class:`Device` builds IR into a :class:`~kernbin.artifact.NativeBinary` (``build``, with the
exact compiler flags) and loads verified bytes into a :class:`Module` (``load_native``). It
never checks checksums or requirements itself: :mod:`kernbin.api` does that once, for every
backend, before bytes reach it. Every runtime object has ``handle`` (the raw runtime object).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, NamedTuple

from ..artifact import BuildInfo, NativeBinary
from ..device import DeviceId, Toolchain
from ..errors import InvalidBinary, KernelNotFound, LaunchError
from ..ir import IR
from ..target import Target
from ._launch import DevicePointer, LaunchConfig, LocalMemory, launch_sizes

__all__ = ["Backend", "Fit", "exact_match", "DeviceInfo", "Device", "Module", "Kernel", "LaunchConfig", "LocalMemory",
           "DevicePointer", "launch_sizes"]


class Fit(NamedTuple):
    """A runs-on verdict: ``ok``, and when not, ``reason`` (words) and ``rule`` (a stable id);
    ``member`` names the fat-binary member to load when the binary holds several."""
    ok: bool
    reason: str = ""
    rule: str = ""
    member: str | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """A device as listed by ``kernbin devices``."""
    target: str
    id: DeviceId
    type: str
    usable: bool                  # can kernbin build for it / load binaries on it
    note: str = ""
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"target": self.target, "type": self.type, "usable": self.usable, "note": self.note,
                "fingerprint": self.id.fingerprint, **self.id.to_json(), **self.details}


def exact_match(required: Mapping, mine: Mapping, rule: str, what: str) -> Fit:
    """The rule for binaries only one exact runtime may load: every value equal, or a Fit naming
    the differences (``what`` says whose they are)."""
    diff = [k for k in sorted(set(required) | set(mine)) if required.get(k) != mine.get(k)]
    if diff:
        detail = "; ".join(f"{k} {required.get(k)!r} != {mine.get(k)!r}" for k in diff)
        return Fit(False, f"{what}: {detail}", rule)
    return Fit(True)


class Backend(ABC):
    """One runtime (see the module docstring for the contract)."""
    name: ClassVar[str]
    offline: ClassVar[bool] = False          # builds only (ocloc, offline CUDA)
    ir_kinds: ClassVar[tuple[str, ...]] = ("spirv",)
    register_file_flags: ClassVar[Mapping[str, str]] = {}
    register_file_spellings: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def list_devices(self) -> list[DeviceInfo]:
        """Every device this runtime sees (empty when the runtime is missing)."""

    @abstractmethod
    def open(self, target: Target) -> "Device":
        """A live device for ``target``, shared within the process."""

    @abstractmethod
    def can_run(self, info, device: "Device") -> Fit:
        """Whether bytes built as ``info`` says may run on ``device`` (the load gate)."""


class Device(ABC):
    """A device of one backend: builds IR, loads verified native bytes."""
    backend: Backend
    target: Target
    id: DeviceId
    #: load_native reads the driver's build log and sets ``module.driver_jit`` on a recompile
    reports_recompile: ClassVar[bool] = False

    @property
    @abstractmethod
    def toolchain(self) -> Toolchain:
        """The toolchain a build here would use ("built by"; part of the cache key)."""

    @abstractmethod
    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        """Build IR with exactly these compiler flags (the IR is embedded in the result)."""

    @property
    def register_file_flags(self) -> Mapping[str, str]:
        """How this device's compiler spells the register-file modes (empty: it has none)."""
        return self.backend.register_file_flags

    def payload(self, native: NativeBinary, fit: Fit) -> bytes:
        """The bytes to hand to the runtime after the gate passed: a cheap structural check of
        the device binary, and the chosen member of a fat binary. Raises InvalidBinary."""
        if not native.binary:
            raise InvalidBinary("empty device binary", rule="device-binary")
        return native.binary

    @abstractmethod
    def load_native(self, native: NativeBinary, payload: bytes | None = None) -> "Module":
        """Load verified native bytes (``payload``: what :meth:`payload` chose; default the
        whole binary). Raises RuntimeAPIError if the runtime rejects them."""

    def load_ir(self, ir: IR, flags: tuple[str, ...] = ()) -> "Module":
        """JIT path: build IR and load it without taking the native binary out (what every
        process pays without kernbin; ``kernbin bench`` times it)."""
        raise NotImplementedError(f"{self.target} cannot load IR directly")

    def load_binary(self, binary: bytes, flags: tuple[str, ...] = ()) -> "Module":
        """Hand bare device-binary bytes to the runtime with none of kernbin's checks: the floor
        ``kernbin bench`` measures kernbin's own overhead against."""
        raise NotImplementedError(f"{self.target} cannot load bare binaries")

    @property
    def handle(self):
        """The raw runtime object behind this device."""
        raise NotImplementedError


class Module(ABC):
    """A loaded program. ``source`` is ``"native"`` or ``"ir"`` (rebuilt by fallback).
    ``native`` is None only for modules from :meth:`Device.load_ir` / :meth:`Device.load_binary`;
    ``member`` names the fat-binary member that was loaded, if any; ``driver_jit`` says why the
    driver compiled IR instead of loading native code (None: it did not; see :mod:`kernbin._jit`)."""

    source = "native"                       # class defaults: a native load sets only what differs
    fallback_reason: str | None = None
    member: str | None = None
    _choice = None                          # a bundle load's (entry target, index, reasons, member)

    @property
    def bundle_choice(self) -> dict | None:
        """For a module loaded from a bundle: which entry (``entry``, ``index``), ``source``
        (``"native"`` or ``"ir"``) and, for every entry, why it was or was not taken (``reasons``)."""
        c = self._choice
        if c is None or type(c) is dict:
            return c
        target, index, reasons, member = c
        if reasons is None:                 # chosen in bulk: the one entry, and it fitted
            reasons = [f"{target}: fits" + (f" ({member})" if member else "")]
        self._choice = c = {"entry": target, "index": index, "source": "native", "reasons": reasons}
        return c

    @bundle_choice.setter
    def bundle_choice(self, value) -> None:
        self._choice = value
    driver_jit: str | None = None

    def __init__(self, device: Device, native: NativeBinary | None):
        self.device = device
        self.native = native
        self._kernels: dict[str, Kernel] = {}

    @property
    def rebuilt(self) -> bool:
        """True when the native binary could not be used and was rebuilt from IR.
        Then :attr:`native` is the new binary, for the caller to store."""
        return self.source == "ir"

    @property
    @abstractmethod
    def kernel_names(self) -> tuple[str, ...]:
        """The kernels this module defines."""

    @abstractmethod
    def _make_kernel(self, name: str) -> "Kernel": ...

    def kernel(self, name: str) -> "Kernel":
        """The kernel called ``name`` (created once per module); KernelNotFound otherwise."""
        k = self._kernels.get(name)
        if k is None:
            if name not in self.kernel_names:
                raise KernelNotFound(name, self.kernel_names)
            k = self._kernels[name] = self._make_kernel(name)
        return k


class Kernel(ABC):
    """One kernel of a loaded module. ``handle`` is the runtime's kernel object."""
    name: str

    @property
    @abstractmethod
    def attributes(self) -> dict[str, int]:
        """Properties the runtime reports for this kernel on this device."""

    def launch(self, config, *args) -> None:
        """Run once and wait.

        ``config`` is a :class:`LaunchConfig` (grid of groups, group size, dynamic shared/local
        memory, stream); for OpenCL-style calls ``launch(global_size, local_size, *args)`` also
        works (``local_size`` None lets the runtime choose). Arguments: numpy arrays (copied in,
        and back out when writeable), numpy scalars (by value), :class:`DevicePointer` or objects
        with ``data_ptr()`` (device memory, passed as is), :class:`LocalMemory` (a local buffer).
        """
        if isinstance(config, LaunchConfig):
            return self._launch(config.global_size, config.block, config, args)
        if not args:
            raise LaunchError("launch(config, *args) or launch(global_size, local_size, *args)")
        local, args = args[0], args[1:]
        gs = launch_sizes(config, "global size")
        ls = launch_sizes(local, "local size")
        if ls is not None and len(ls) != len(gs):
            raise LaunchError(f"local size {ls} and global size {gs} differ in dimensions")
        return self._launch(gs, ls, LaunchConfig.nd(gs, ls) if ls is not None else None, args)

    @abstractmethod
    def _launch(self, global_size: tuple[int, ...], local_size: tuple[int, ...] | None,
                config: LaunchConfig | None, args: tuple) -> None:
        """Backend launch: sizes in work-items (``local_size`` None: the runtime picks)."""
