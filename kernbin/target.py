"""Target spelling, canonicalised once, on entry: ``BACKEND:SELECTOR``.

Backends and their selector rules come from the registry (:mod:`kernbin.backends`);
spellings are lower-cased and aliases resolved (``level_zero:0``, ``ze:0`` ->
``level-zero:0``), so one device has one target string everywhere (cache keys, reports).
Surrounding spaces are dropped; control characters anywhere (``"opencl:cpu\n"``) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TargetError

__all__ = ["Target", "parse_target"]

_ALIASES = {"level_zero": "level-zero", "levelzero": "level-zero", "ze": "level-zero", "l0": "level-zero",
            "cl": "opencl"}
_MAX = 256


@dataclass(frozen=True)
class Target:
    backend: str
    selector: str   # "cpu", "gpu", a device index, or an offline device name

    def __str__(self) -> str:
        return f"{self.backend}:{self.selector}"


def parse_target(spec: "str | Target") -> Target:
    """A canonical :class:`Target`; :class:`TargetError` (with ``target``) for anything else."""
    if isinstance(spec, Target):
        return spec
    from .backends import REGISTRY, check_selector
    if not isinstance(spec, str) or ":" not in spec or len(spec) > _MAX:
        raise TargetError(f"bad target {spec!r}: expected BACKEND:DEVICE, e.g. "
                          + ", ".join(e.spelling.split(",")[0].split(" ")[0] for e in REGISTRY.values()),
                          spec if isinstance(spec, str) else None)
    if not spec.isprintable():          # "opencl:cpu\n", a tab, a NUL: never stripped into a valid target
        raise TargetError(f"bad target {spec!r}: control characters (a newline, a tab, ...) are not allowed", spec)
    backend, _, selector = spec.partition(":")
    backend = backend.strip().lower()
    backend = _ALIASES.get(backend, backend)
    selector = selector.strip().lower()
    if backend not in REGISTRY:
        raise TargetError(f"bad target {spec!r}: unknown backend {backend!r} (known: {', '.join(REGISTRY)})", spec)
    if not selector:
        raise TargetError(f"bad target {spec!r}: no device after ':'", spec)
    check_selector(backend, selector, spec)
    if selector.isdigit():
        selector = str(int(selector))
    return Target(backend, selector)
