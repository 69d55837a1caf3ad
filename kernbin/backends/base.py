"""The protocol every backend implements, and the runtime-neutral parts of it.

A backend module exposes two functions:

``list_devices() -> list[DeviceInfo]``
    every device the runtime sees (without failing when there are none);
``open_device(target: Target) -> Device``
    a live device for a target, or :class:`~kernbin.errors.RuntimeNotFound`.

A :class:`Device` builds IR into a :class:`~kernbin.artifact.NativeBinary`
(``build``) and loads verified native bytes into a :class:`Module`
(``load_native``). It never checks checksums or compatibility itself: that is
done once, for every backend, in :mod:`kernbin.api` before bytes reach it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..artifact import NativeBinary
from ..device import DeviceId
from ..errors import KernbinError, LaunchError
from ..ir import SpirvModule
from ..target import Target

__all__ = ["DeviceInfo", "Device", "Module", "Kernel", "LocalMemory", "launch_sizes"]


@dataclass(frozen=True)
class DeviceInfo:
    """A device as listed by ``kernbin devices``."""
    target: str
    id: DeviceId
    type: str
    usable: bool                  # can kernbin build SPIR-V for it / load binaries on it
    note: str = ""
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"target": self.target, "type": self.type, "usable": self.usable, "note": self.note,
                "fingerprint": self.id.fingerprint, **self.id.to_json(), **self.details}


@dataclass(frozen=True)
class LocalMemory:
    """A kernel argument that is a ``__local`` buffer of ``nbytes`` bytes."""
    nbytes: int


class Device(ABC):
    target: Target
    id: DeviceId

    @abstractmethod
    def build(self, ir: SpirvModule, options: str = "") -> NativeBinary:
        """Build IR into a native binary for this device (the IR is embedded)."""

    @abstractmethod
    def check_native(self, binary: bytes) -> str | None:
        """Cheap structural check of device-binary bytes; a reason string if they are not ours."""

    @abstractmethod
    def load_native(self, native: NativeBinary) -> "Module":
        """Load verified native bytes. Raises RuntimeAPIError if the runtime rejects them."""

    def load_ir(self, ir: SpirvModule, options: str = "") -> "Module":
        """JIT path: build IR and load it without taking the native binary out (what
        every process pays without kernbin; ``kernbin bench`` times it)."""
        raise NotImplementedError(f"{self.target} cannot load IR directly")

    def load_binary(self, binary: bytes, options: str = "") -> "Module":
        """Hand bare device-binary bytes to the runtime with none of kernbin's checks:
        the floor ``kernbin bench`` measures kernbin's own overhead against."""
        raise NotImplementedError(f"{self.target} cannot load bare binaries")

    @property
    def handle(self):
        """The raw runtime object(s) behind this device."""
        raise NotImplementedError


class Module(ABC):
    """A loaded program. ``source`` is ``"native"`` or ``"ir"`` (rebuilt by fallback).
    ``native`` is None only for modules from :meth:`Device.load_ir` / :meth:`Device.load_binary`."""

    def __init__(self, device: Device, native: NativeBinary | None):
        self.device = device
        self.native = native
        self.source = "native"
        self.fallback_reason: str | None = None
        self._kernels: dict[str, Kernel] = {}

    @property
    def rebuilt(self) -> bool:
        """True when the native binary could not be used and was rebuilt from IR.
        Then :attr:`native` is the new binary, for the caller to store."""
        return self.source == "ir"

    @property
    @abstractmethod
    def kernel_names(self) -> tuple[str, ...]: ...

    @abstractmethod
    def _make_kernel(self, name: str) -> "Kernel": ...

    def kernel(self, name: str) -> "Kernel":
        k = self._kernels.get(name)
        if k is None:
            if name not in self.kernel_names:
                raise KernbinError(f"no kernel {name!r} in module (kernels: {', '.join(self.kernel_names)})")
            k = self._kernels[name] = self._make_kernel(name)
        return k


class Kernel(ABC):
    name: str

    @property
    @abstractmethod
    def attributes(self) -> dict[str, int]:
        """Properties the runtime reports for this kernel on this device."""

    @abstractmethod
    def launch(self, global_size, local_size, *args) -> None:
        """Run once and wait. numpy arrays are copied in and, when writeable, back out;
        numpy scalars are passed by value; :class:`LocalMemory` sizes local buffers."""


def launch_sizes(value, what: str) -> tuple[int, ...] | None:
    """An int or a tuple of 1-3 positive ints as a tuple; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) or hasattr(value, "__index__") and not hasattr(value, "__len__"):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise LaunchError(f"{what} must be an int or a tuple of 1-3 ints, not {value!r}") from None
    if not 1 <= len(out) <= 3 or any(v <= 0 for v in out):
        raise LaunchError(f"{what} must have 1-3 positive dimensions, not {value!r}")
    return out
