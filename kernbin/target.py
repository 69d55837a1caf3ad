"""Target spelling: ``opencl:cpu``, ``opencl:N``, ``level-zero:N``, ``ocloc:<device>``, ``cuda:N``."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TargetError

__all__ = ["Target", "parse_target", "BACKENDS"]

#: Backends kernbin knows by name; which of them are implemented is in ``kernbin.backends``.
BACKENDS = ("opencl", "level-zero", "ocloc", "cuda")


@dataclass(frozen=True)
class Target:
    backend: str
    selector: str   # "cpu", "gpu", a device index, or an offline device name

    def __str__(self) -> str:
        return f"{self.backend}:{self.selector}"


def parse_target(spec: "str | Target") -> Target:
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise TargetError(f"bad target {spec!r}: expected BACKEND:DEVICE, e.g. opencl:cpu, opencl:0, "
                          f"level-zero:0, ocloc:pvc, cuda:0")
    backend, _, selector = spec.partition(":")
    backend = backend.strip().lower()
    selector = selector.strip()
    if backend not in BACKENDS:
        raise TargetError(f"bad target {spec!r}: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if not selector:
        raise TargetError(f"bad target {spec!r}: no device after ':'")
    if backend in ("level-zero", "cuda") and not selector.isdigit():
        raise TargetError(f"bad target {spec!r}: {backend} devices are numbered, e.g. {backend}:0")
    return Target(backend, selector)
