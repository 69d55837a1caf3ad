"""Launch configuration and the one argument helper every backend shares.

:class:`LaunchConfig` is CUDA-shaped (``grid`` of groups x ``block`` threads per group,
``shared_mem_bytes`` of dynamic shared/local memory, a ``stream``) and converts to
OpenCL / Level Zero terms (``global_size`` = grid x block).

:class:`HostArrays` is the copy-in / copy-out a launch does for host numpy arrays, written
once: a backend gives it four callbacks (allocate, write, read, free) and gets device
buffers back; arrays that are writeable are copied back after the kernel ran, and every
buffer is freed, also when the launch fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LaunchError

__all__ = ["LaunchConfig", "LocalMemory", "DevicePointer", "launch_sizes", "classify", "HostArrays"]


def launch_sizes(value, what: str) -> tuple[int, ...] | None:
    """An int or a tuple of 1-3 positive ints as a tuple; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) or hasattr(value, "__index__") and not hasattr(value, "__len__"):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise LaunchError(f"{what} must be an int or a tuple of 1-3 ints, not {value!r}") from None
    if not 1 <= len(out) <= 3 or any(v <= 0 for v in out):
        raise LaunchError(f"{what} must have 1-3 positive dimensions, not {value!r}")
    return out


@dataclass(frozen=True)
class LaunchConfig:
    """``grid`` groups (thread blocks) of ``block`` work-items each, per dimension (1-3);
    ``shared_mem_bytes`` of dynamic shared memory (CUDA) / local memory; ``stream`` a runtime
    stream or queue handle (None: the device's default)."""
    grid: tuple[int, ...]
    block: tuple[int, ...]
    shared_mem_bytes: int = 0
    stream: object = None

    def __post_init__(self):
        grid, block = launch_sizes(self.grid, "grid"), launch_sizes(self.block, "block")
        if len(grid) != len(block):
            raise LaunchError(f"grid {grid} and block {block} differ in dimensions")
        if not isinstance(self.shared_mem_bytes, int) or self.shared_mem_bytes < 0:
            raise LaunchError(f"shared_mem_bytes must be a non-negative int, not {self.shared_mem_bytes!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "block", block)

    @classmethod
    def nd(cls, global_size, local_size, **kw) -> "LaunchConfig":
        """From OpenCL terms: ``global_size`` work-items in groups of ``local_size``."""
        gs, ls = launch_sizes(global_size, "global size"), launch_sizes(local_size, "local size")
        if ls is None or len(ls) != len(gs):
            raise LaunchError(f"local size {ls} must have the dimensions of global size {gs}")
        if any(g % l for g, l in zip(gs, ls)):
            raise LaunchError(f"global size {gs} is not a multiple of the group size {ls}")
        return cls(tuple(g // l for g, l in zip(gs, ls)), ls, **kw)

    @property
    def global_size(self) -> tuple[int, ...]:
        return tuple(g * b for g, b in zip(self.grid, self.block))

    def dims3(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(grid, block) padded to three dimensions."""
        pad = (1,) * (3 - len(self.grid))
        return tuple(self.grid) + pad, tuple(self.block) + pad


@dataclass(frozen=True)
class LocalMemory:
    """A kernel argument that is a ``__local`` buffer of ``nbytes`` bytes."""
    nbytes: int


@dataclass(frozen=True)
class DevicePointer:
    """A kernel argument that is device memory the caller owns (passed as the pointer value)."""
    ptr: int


def classify(args, num_args: int | None, name: str) -> list[tuple[str, object]]:
    """Each argument as ``(kind, value)``: ``array`` (host numpy array), ``scalar`` (numpy scalar
    as a 0-d array), ``local`` (bytes of local memory), ``pointer`` (an int device address)."""
    import numpy as np
    if num_args is not None and len(args) != num_args:
        raise LaunchError(f"kernel {name} takes {num_args} arguments, {len(args)} given")
    out = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            if not a.flags.c_contiguous:
                raise LaunchError(f"argument {i}: array must be C-contiguous")
            out.append(("array", a))
        elif isinstance(a, np.generic):
            out.append(("scalar", np.array(a)))
        elif isinstance(a, LocalMemory):
            if not isinstance(a.nbytes, int) or a.nbytes <= 0:
                raise LaunchError(f"argument {i}: LocalMemory needs a positive size, not {a.nbytes!r}")
            out.append(("local", a.nbytes))
        elif isinstance(a, DevicePointer):
            out.append(("pointer", int(a.ptr)))
        elif callable(getattr(a, "data_ptr", None)):          # PyTorch tensors and the like
            out.append(("pointer", int(a.data_ptr())))
        else:
            raise LaunchError(f"argument {i}: pass numpy arrays, numpy scalars (e.g. np.int32(n)), "
                              f"kernbin.LocalMemory or device memory, not {type(a).__name__}")
    return out


class HostArrays:
    """Copy-in / copy-out of host arrays around one launch.

    ``alloc(nbytes) -> buf``, ``write(buf, array)``, ``read(buf, array)``, ``free(buf)``
    are the backend's (``alloc_with(array) -> buf``, when given, allocates and copies in at once). Use as a context manager; :meth:`device` gives the buffer of an
    array, :meth:`copy_back` copies writeable arrays back after the kernel ran.
    """

    def __init__(self, alloc, write, read, free=None, alloc_with=None):
        self._alloc, self._write, self._read, self._free = alloc, write, read, free
        self._alloc_with = alloc_with       # optional: allocate and copy in, in one runtime call
        self._bufs: list[tuple[object, object]] = []

    def __enter__(self) -> "HostArrays":
        return self

    def device(self, array) -> object:
        if array.nbytes and self._alloc_with is not None:
            buf = self._alloc_with(array)
            self._bufs.append((array, buf))
            return buf
        buf = self._alloc(max(array.nbytes, 1))
        self._bufs.append((array, buf))
        if array.nbytes:
            self._write(buf, array)
        return buf

    def copy_back(self) -> None:
        for array, buf in self._bufs:
            if array.nbytes and array.flags.writeable:
                self._read(buf, array)

    def __exit__(self, *exc) -> None:
        if self._free is not None:
            for _, buf in self._bufs:
                try:
                    self._free(buf)
                except Exception:        # noqa: BLE001 - freeing must not hide the launch's error
                    pass
        self._bufs.clear()
