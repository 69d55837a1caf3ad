"""Parsers of device-binary formats. Each raises :class:`~kernbin.errors.InvalidBinary`
on malformed input, never a crash."""
