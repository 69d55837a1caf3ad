"""What every IR kind shares: the content hash, the kernel list, reading a file safely."""

from __future__ import annotations

import os

__all__ = ["IRModule"]


class IRModule:
    """Mixin for the frozen IR dataclasses (``data`` and ``entry_points`` fields)."""

    @property
    def sha256(self) -> str:
        """Stable content hash (hex SHA-256 of the module's bytes, exactly as given)."""
        import hashlib
        return hashlib.sha256(self.data).hexdigest()

    @property
    def kernels(self) -> tuple[str, ...]:
        """Names of the module's kernels (entry points), in module order."""
        return self.entry_points

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        """Read and validate a file (a regular file of at most 256 MiB: no FIFOs or devices)."""
        from .._fs import read_regular_file
        return cls.from_bytes(read_regular_file(path, 256 << 20, what=f"{cls.__name__} file"))
