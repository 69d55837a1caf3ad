"""The launch metadata of a Triton kernel, as kernbin stores it: parsed once, shared by the AOT
compiler (which writes it) and the deploy-time launcher (which reads it). Imports no Triton.

It lives in a bundle entry's ``BuildInfo.extra["triton"]`` (recorded in the binary and covered by the
bundle's digests and signature) as JSON *text*, not as nested JSON: BuildInfo's reader walks every
nested value of ``extra`` (a depth check, ~0.5 us per value in Python), which for ~100 values cost more
per kernel than loading the cubin; a string is one value, and ``json.loads`` in C decodes it when the
launcher needs it. Its content::

    {"format": 1, "kernel": "add_kernel", "source": "add_kernel", "triton_version": "3.6.0",
     "hash": "<Triton's compile hash>", "target": {"backend": "cuda", "arch": 90, "warp_size": 32},
     "num_warps": 4, "threads_per_warp": 32, "num_ctas": 1, "cluster_dims": [1, 1, 1], "num_stages": 3,
     "shared": 0, "tmem_size": 0, "launch_cooperative_grid": false, "launch_pdl": false,
     "global_scratch": {"size": 0, "align": 1}, "profile_scratch": {"size": 0, "align": 1},
     "args":   [{"name": "x_ptr", "type": "*fp32", "divisibility": 16},      # the Python arguments, in order
                {"name": "n", "type": "i32"},
                {"name": "BLOCK", "type": "constexpr", "value": 1024}],     # specialised away
     "params": [{"name": "x_ptr", "type": "*fp32", "size": 8}, ...,         # what the cubin takes, in order
                {"name": "global_scratch", "type": "*i8", "size": 8, "appended": true},
                {"name": "profile_scratch", "type": "*i8", "size": 8, "appended": true}],
     "options": {"num_warps": 4, "num_stages": 3, "maxnreg": null, "enable_fp_fusion": true, ...}}

An argument Triton specialised away carries ``"value"`` (a ``constexpr``, or an integer Triton
fixed at 1: ``"specialised": "equal_to_1"``); one it assumed divisible by 16 carries
``"divisibility": 16``. The launcher checks every call against these (:class:`SpecializationMismatch`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec

from ..errors import KernbinError, LaunchError
from . import _sig

__all__ = ["FORMAT", "LaunchMeta", "ArgSpec", "ParamSpec", "SpecializationMismatch", "TritonMetaError",
           "SCALAR_FORMATS", "TORCH_DTYPES", "parse_signature", "APPENDED_PARAMS", "MAX_NUM_CTAS", "param_size"]

FORMAT = 1
#: the pointer parameters Triton 3.6 appends to every CUDA kernel (its launcher passes them last)
APPENDED_PARAMS = ("global_scratch", "profile_scratch")

#: Triton scalar type -> (struct format, bytes) as the kernel parameter holds it
SCALAR_FORMATS = {
    "i1": ("b", 1), "i8": ("b", 1), "i16": ("h", 2), "i32": ("i", 4), "i64": ("q", 8),
    "u1": ("B", 1), "u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "u64": ("Q", 8),
    "fp16": ("e", 2), "bf16": ("H", 2), "fp32": ("f", 4), "f32": ("f", 4), "fp64": ("d", 8),
}
_INT_RANGE = {"i1": (-128, 127), "i8": (-(1 << 7), (1 << 7) - 1), "i16": (-(1 << 15), (1 << 15) - 1),
              "i32": (-(1 << 31), (1 << 31) - 1), "i64": (-(1 << 63), (1 << 63) - 1),
              "u1": (0, 255), "u8": (0, 255), "u16": (0, (1 << 16) - 1), "u32": (0, (1 << 32) - 1),
              "u64": (0, (1 << 64) - 1)}
#: ``str(tensor.dtype)`` of PyTorch -> Triton's pointer element type (what Triton's JIT would have
#: specialised on); a tensor whose dtype maps to another type than the kernel was built for is refused
TORCH_DTYPES = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64",
    "torch.int8": "i8", "torch.int16": "i16", "torch.int32": "i32", "torch.int64": "i64",
    "torch.uint8": "u8", "torch.uint16": "u16", "torch.uint32": "u32", "torch.uint64": "u64", "torch.bool": "i1",
    "torch.float8_e4m3fn": "fp8e4nv", "torch.float8_e5m2": "fp8e5", "torch.float8_e4m3fnuz": "fp8e4b8",
    "torch.float8_e5m2fnuz": "fp8e5b16",
}
_TYPE = _sig.TYPE
_POINTER = re.compile(r"\*k?(?:i1|i8|i16|i32|i64|u1|u8|u16|u32|u64|fp8e4nv|fp8e5|fp8e4b8|fp8e5b16|fp8e4b15|"
                      r"fp16|bf16|fp32|f32|fp64)")
#: the largest cluster Triton launches (``num_ctas``; 16 is non-portable: Hopper and Blackwell)
MAX_NUM_CTAS = 16
#: what the devices a launch can reach allow (refused when loading the metadata, before any launch):
#: warps per block a power of two up to 32 (1024 threads of 32), threads per block at most 1024 (CUDA's
#: limit on every compute capability), a warp of 16, 32 or 64 threads, and at most 227 KiB (232448
#: bytes) of shared memory per block (the opt-in maximum of sm_90 / sm_100; sm_80 allows 163 KiB)
MAX_NUM_WARPS = 32
MAX_THREADS_PER_BLOCK = 1024
WARP_SIZES = (16, 32, 64)
MAX_SHARED_BYTES = 232448


def param_size(ty: str) -> int | None:
    """The bytes a kernel parameter of Triton type ``ty`` holds (8 for a pointer), or None for a type
    no kernel parameter has."""
    if _POINTER.fullmatch(ty):
        return 8
    fmt = SCALAR_FORMATS.get(ty)
    return fmt[1] if fmt is not None else None


class TritonMetaError(KernbinError):
    """Triton launch metadata that is missing or malformed (``field`` names what)."""

    def __init__(self, reason: str, field: str = ""):
        self.reason, self.field = reason, field
        super().__init__(f"Triton launch metadata: {reason}")


class SpecializationMismatch(LaunchError):
    """A launch whose arguments break what the kernel was compiled for: ``kernel``, ``arg`` (the
    argument's name), ``rule`` (``"divisibility"``, ``"constexpr"``, ``"equal_to_1"``, ``"dtype"``,
    ``"range"``, ``"type"``, ``"device"``, ``"arity"``, ``"grid"``), ``expected`` and ``got``."""

    def __init__(self, kernel: str, arg: str | None, rule: str, expected, got, detail: str = ""):
        self.kernel, self.arg, self.rule, self.expected, self.got = kernel, arg, rule, expected, got
        where = f"argument {arg!r}" if arg else "launch"
        super().__init__(f"kernel {kernel}: {where}: {rule}: expected {expected!r}, got {got!r}"
                         + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ArgSpec:
    """One Python-level argument of the Triton kernel."""
    name: str
    type: str                       # "*fp32", "i32", "fp32", "constexpr", ...
    divisibility: int = 1           # 16: Triton assumed pointer % 16 == 0 / value % 16 == 0
    value: Any = None               # the specialised value (constexpr or equal_to_1)
    specialised: str = ""           # "", "constexpr" or "equal_to_1"

    @property
    def is_pointer(self) -> bool:
        return self.type.startswith("*")

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "type": self.type}
        if self.divisibility != 1:
            out["divisibility"] = self.divisibility
        if self.specialised:
            out["specialised"] = self.specialised
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of the compiled kernel, in the order the cubin takes them."""
    name: str
    type: str
    size: int
    appended: bool = False

    def to_json(self) -> dict:
        out = {"name": self.name, "type": self.type, "size": self.size}
        if self.appended:
            out["appended"] = True
        return out


_Name = Annotated[str, msgspec.Meta(max_length=1024)]


class _ArgJSON(msgspec.Struct, forbid_unknown_fields=True):
    name: _Name
    type: Annotated[str, msgspec.Meta(max_length=64)]
    divisibility: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] = 1
    specialised: Literal["", "constexpr", "equal_to_1"] = ""
    value: Union[None, bool, int, float, str] = None


class _ParamJSON(msgspec.Struct, forbid_unknown_fields=True):
    name: _Name
    type: Annotated[str, msgspec.Meta(max_length=64)]
    size: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    appended: bool = False


class _ScratchJSON(msgspec.Struct, forbid_unknown_fields=True):
    size: Annotated[int, msgspec.Meta(ge=0, le=1 << 32)] = 0
    align: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] = 1


class _MetaJSON(msgspec.Struct):
    format: int
    kernel: _Name
    num_warps: Annotated[int, msgspec.Meta(ge=1, le=MAX_NUM_WARPS)]
    args: Annotated[list[_ArgJSON], msgspec.Meta(max_length=4096)]
    params: Annotated[list[_ParamJSON], msgspec.Meta(max_length=4096)]
    threads_per_warp: Annotated[int, msgspec.Meta(ge=1, le=128)] = 32
    num_ctas: Annotated[int, msgspec.Meta(ge=1, le=MAX_NUM_CTAS)] = 1
    cluster_dims: list[Annotated[int, msgspec.Meta(ge=1, le=MAX_NUM_CTAS)]] = \
        msgspec.field(default_factory=lambda: [1, 1, 1])
    shared: Annotated[int, msgspec.Meta(ge=0, le=MAX_SHARED_BYTES)] = 0
    global_scratch: _ScratchJSON = msgspec.field(default_factory=_ScratchJSON)
    profile_scratch: _ScratchJSON = msgspec.field(default_factory=_ScratchJSON)
    launch_cooperative_grid: bool = False
    launch_pdl: bool = False
    num_stages: Annotated[int, msgspec.Meta(ge=0, le=1 << 10)] = 0
    source: str = ""
    triton_version: str = ""


_DECODER = msgspec.json.Decoder(_MetaJSON)
_KERNEL = re.compile(r"[A-Za-z_$][\w$]{0,1023}")


@dataclass(frozen=True)
class LaunchMeta:
    """Everything a launch needs, from ``BuildInfo.extra["triton"]`` (validated here, once)."""
    kernel: str
    source: str
    num_warps: int
    threads_per_warp: int
    num_ctas: int
    cluster_dims: tuple[int, int, int]
    shared: int
    args: tuple[ArgSpec, ...]
    params: tuple[ParamSpec, ...]
    global_scratch: tuple[int, int]          # (bytes per program, alignment)
    profile_scratch: tuple[int, int]
    launch_cooperative_grid: bool = False
    launch_pdl: bool = False
    num_stages: int = 0
    triton_version: str = ""
    raw: Any = None                          # the JSON it came from

    @property
    def block(self) -> int:
        """Threads per block: ``num_warps * threads_per_warp``."""
        return self.num_warps * self.threads_per_warp

    @classmethod
    def from_json(cls, obj) -> "LaunchMeta":
        """Validate and read the metadata (its JSON text as stored in a bundle, or a dict): typed by
        msgspec in C, then the cross-checks (parameters = the unspecialised arguments, sizes by type)."""
        try:
            if isinstance(obj, (str, bytes)):
                j = _DECODER.decode(obj)
            elif isinstance(obj, dict):
                j = msgspec.convert(obj, _MetaJSON)
            else:
                raise TritonMetaError("not an object")
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as e:   # UnicodeDecodeError too
            text = str(e)
            field = next((f for f in ("format", "kernel", "num_warps", "threads_per_warp", "cluster_dims", "args",
                                      "params", "shared", "num_ctas", "global_scratch", "profile_scratch")
                          if f"$.{f}" in text), "")
            raise TritonMetaError(text, field) from None
        if j.format != FORMAT:
            raise TritonMetaError(f"format {j.format!r} (this kernbin reads {FORMAT})", "format")
        if not _KERNEL.fullmatch(j.kernel):
            raise TritonMetaError(f"bad kernel name {j.kernel!r}", "kernel")
        if j.num_warps & (j.num_warps - 1):
            raise TritonMetaError(f"num_warps {j.num_warps} is not a power of two", "num_warps")
        if j.threads_per_warp not in WARP_SIZES:
            raise TritonMetaError(f"a warp of {j.threads_per_warp} threads (devices have {WARP_SIZES})",
                                  "threads_per_warp")
        if j.num_warps * j.threads_per_warp > MAX_THREADS_PER_BLOCK:
            raise TritonMetaError(f"{j.num_warps} warps of {j.threads_per_warp} threads is more than the "
                                  f"{MAX_THREADS_PER_BLOCK} threads a block can have", "num_warps")
        if len(j.cluster_dims) != 3:
            raise TritonMetaError(f"bad cluster_dims {j.cluster_dims!r}", "cluster_dims")
        cluster = j.cluster_dims[0] * j.cluster_dims[1] * j.cluster_dims[2]
        if cluster > MAX_NUM_CTAS:
            raise TritonMetaError(f"cluster_dims {j.cluster_dims} make a cluster of {cluster} blocks, more than "
                                  f"{MAX_NUM_CTAS}", "cluster_dims")
        if cluster != 1 and cluster != j.num_ctas:      # the launcher launches clusters of num_ctas x 1 x 1
            raise TritonMetaError(f"cluster_dims {j.cluster_dims} ({cluster} blocks) disagree with num_ctas "
                                  f"{j.num_ctas}", "cluster_dims")
        args = []
        seen = set()
        for a in j.args:
            if not a.specialised and not _TYPE.fullmatch(a.type):
                raise TritonMetaError(f"argument {a.name!r}: unknown type {a.type!r}", "args")
            if a.name in seen:
                raise TritonMetaError(f"argument {a.name!r} is named twice", "args")
            seen.add(a.name)
            args.append(ArgSpec(a.name, a.type, a.divisibility, a.value, a.specialised))
        params = [ParamSpec(p.name, p.type, p.size, p.appended) for p in j.params]
        for p in params:                        # every parameter: a type the launcher packs, at its size
            want = param_size(p.type)
            if want is None:
                raise TritonMetaError(f"parameter {p.name!r}: unknown type {p.type!r}", "params")
            if want != p.size:
                raise TritonMetaError(f"parameter {p.name!r} of type {p.type} holds {p.size} bytes, not {want}",
                                      "params")
        runtime = [a for a in args if not a.specialised]
        n = len(params) - len(APPENDED_PARAMS)
        body, appended = params[:max(n, 0)], params[max(n, 0):]
        # Triton 3.6 appends exactly its two scratch pointers, last: its launcher passes them there
        if [(p.name, p.type, p.size, p.appended) for p in appended] != \
                [(name, "*i8", 8, True) for name in APPENDED_PARAMS]:
            raise TritonMetaError(f"the parameters must end with {list(APPENDED_PARAMS)} (appended, *i8, 8 bytes), "
                                  f"not {[p.to_json() for p in appended]}", "params")
        if any(p.appended for p in body):
            raise TritonMetaError(f"appended parameters {[p.name for p in body if p.appended]} before the "
                                  f"kernel's own", "params")
        if [a.name for a in runtime] != [p.name for p in body]:
            raise TritonMetaError(f"the parameters {[p.name for p in body]} are not the unspecialised "
                                  f"arguments {[a.name for a in runtime]}", "params")
        for a, p in zip(runtime, body):
            if a.type != p.type:
                raise TritonMetaError(f"parameter {p.name!r} has type {p.type}, its argument {a.type}", "params")
        return cls(kernel=j.kernel, source=j.source or j.kernel, num_warps=j.num_warps,
                   threads_per_warp=j.threads_per_warp, num_ctas=j.num_ctas, cluster_dims=tuple(j.cluster_dims),
                   shared=j.shared, args=tuple(args), params=tuple(params),
                   global_scratch=(j.global_scratch.size, j.global_scratch.align),
                   profile_scratch=(j.profile_scratch.size, j.profile_scratch.align),
                   launch_cooperative_grid=j.launch_cooperative_grid, launch_pdl=j.launch_pdl,
                   num_stages=j.num_stages, triton_version=j.triton_version, raw=obj)

    def check_int(self, arg: ArgSpec, value) -> None:
        """Range of an integer argument for its parameter type."""
        lo, hi = _INT_RANGE[arg.type]
        if not lo <= value <= hi:
            raise SpecializationMismatch(self.kernel, arg.name, "range", f"{arg.type} in [{lo}, {hi}]", value)


def parse_signature(arg_names, signature, constexprs=None) -> tuple[dict, dict, dict]:
    """A kernel's specialisation as Triton's ``ASTSource`` takes it (see :func:`kernbin.triton._sig.parse`);
    a malformed one is a :class:`~kernbin.errors.KernbinError`."""
    try:
        return _sig.parse(arg_names, signature, constexprs)
    except ValueError as e:
        raise KernbinError(str(e)) from None


_constant = _sig.constant


def json_value(value):
    """A constexpr value as JSON data: numbers, booleans, strings and None as they are; anything
    else (a Triton dtype, ...) as its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    inner = getattr(value, "value", None)          # tl.constexpr
    if inner is not None and inner is not value:
        return json_value(inner)
    return str(value)
