"""Parsing a Triton kernel's specialisation (stdlib only: also used by the triton-xpu worker, which
runs in another environment without kernbin's dependencies). Errors are ``ValueError``."""

from __future__ import annotations

import re

__all__ = ["parse", "constant", "TYPE"]

TYPE = re.compile(r"\*?(?:k)?(?:i1|i8|i16|i32|i64|u1|u8|u16|u32|u64|fp8e4nv|fp8e5|fp8e4b8|fp8e5b16|fp8e4b15|"
                  r"fp16|bf16|fp32|f32|fp64)|constexpr")


def parse(arg_names, signature, constexprs=None) -> tuple[dict, dict, dict]:
    """A kernel's specialisation from kernbin's / Triton AOT's spellings, as Triton's ``ASTSource``
    takes it: ``(signature {name: type}, constexprs {name: value}, attrs {(index,): [["tt.divisibility",
    16]]})`` plus which were fixed at 1, in ``constexprs``.

    ``signature`` is a dict ``{name: "type[:hint]"}`` or Triton's AOT string ``"*fp32:16, i32, 1024"``
    (one entry per argument, in order: a type with an optional hint ``:16`` (divisible by 16) or
    ``:1`` (equal to 1, specialised away), or a value (a constexpr)). ``constexprs`` adds or
    overrides constexpr values by name."""
    names = list(arg_names)
    if isinstance(signature, str):
        parts = [s.strip() for s in signature.split(",")] if signature.strip() else []
        if len(parts) > len(names):
            raise ValueError(f"the signature has {len(parts)} entries, the kernel {len(names)} arguments")
        entries = dict(zip(names, parts))
    elif isinstance(signature, dict):
        entries = {str(k): str(v) for k, v in signature.items()}
        unknown = [k for k in entries if k not in names]
        if unknown:
            raise ValueError(f"the signature names {unknown}, which the kernel ({names}) does not take")
    else:
        raise ValueError("signature must be a dict {name: type} or a string '*fp32:16, i32, 1024'")
    consts = dict(constexprs or {})
    for k in consts:
        if k not in names:
            raise ValueError(f"constexpr {k!r} is not an argument of the kernel ({names})")
    sig, attrs, fixed = {}, {}, {}
    for i, name in enumerate(names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        text = entries.get(name)
        if text is None:
            raise ValueError(f"argument {name!r} has neither a type in the signature nor a constexpr value")
        ty, _, hint = text.partition(":")
        ty = ty.strip()
        value = constant(ty)
        if value is not None or ty == "constexpr":
            if value is None:
                raise ValueError(f"argument {name!r} is constexpr: give its value (--constexpr {name}=...)")
            consts[name], sig[name] = value, "constexpr"
            continue
        if not TYPE.fullmatch(ty):
            raise ValueError(f"argument {name!r}: unknown type {ty!r} (e.g. *fp32, i32, fp32)")
        hint = hint.strip()
        if hint in ("", "16", "1"):
            if hint == "16":
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif hint == "1":
                if ty.startswith("*"):
                    raise ValueError(f"argument {name!r}: a pointer cannot be specialised to 1")
                consts[name], sig[name], fixed[name] = 1, "constexpr", ty
                continue
        else:
            raise ValueError(f"argument {name!r}: hint {hint!r}: only :16 (divisible by 16) and :1 are valid")
        sig[name] = ty
    return sig, consts, {"attrs": attrs, "equal_to_1": fixed}


def constant(text: str):
    """A constexpr value spelled in a signature: an integer, a float, True/False; else None."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None
