"""Intel's offline compiler ``ocloc``: SPIR-V -> zebin for a named GPU, no device needed.

Targets: ``ocloc:<device>`` with any device this ocloc accepts (``pvc``, ``acm-g10``,
``tgllp``, ..., an IP version like ``12.60.7``, or a PCI id like ``0x56a0``).

The compiler runs in-process through ``libocloc.so`` (``oclocInvoke``, via ctypes)
when it loads, else as the ``ocloc`` command. ``KERNBIN_OCLOC=inprocess|subprocess``
forces one; ``KERNBIN_OCLOC_LIB`` names the library. Output is always zebin
(``--format zebin``) and carries no IR (``-exclude_ir``: no ``.spv`` section in a zebin, no
``generic_ir`` member in a fat archive), so a runtime that rejects the native code cannot quietly
recompile it from IR; the IR stays in kernbin's own ``.knb`` for kernbin's explicit fallback. The
build log is kept; ocloc's driver version and IGC's version go into the
:class:`~kernbin.device.DeviceId`.

An ``ocloc`` target builds only: its binaries load on a Level Zero or OpenCL device of
that kind, not on the offline compiler itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from ..artifact import BuildInfo, KernelInfo, NativeBinary
from ..device import DeviceId, Toolchain
from ..errors import BuildError, KernbinError, OfflineTarget, RuntimeNotFound, TargetError
from ..formats import zebin as zefmt
from ..ir import IR
from ..options import BuildOptions
from ..target import Target
from . import _intel
from .base import Backend, Device, DeviceInfo, Fit

__all__ = ["OclocBackend", "OclocDevice", "Ocloc", "get_ocloc", "INSTALL_HINT", "parse_spills"]

BACKEND = "ocloc"
INSTALL_HINT = ("install Intel's offline compiler: on Debian/Ubuntu `apt-get install intel-opencl-icd` "
                "(ships ocloc and libocloc.so), or Intel's compute-runtime packages")
#: the devices `kernbin devices` lists for ocloc (any device ocloc accepts can be targeted)
LISTED = ("pvc", "acm-g10", "tgllp")
_SPILL_RE = re.compile(r"kernel\s+(\S+)\s+compiled SIMD(\d+) allocated (\d+) regs and spilled around (\d+)")
_u8p = ctypes.POINTER(ctypes.c_uint8)
#: ocloc returns OpenCL result codes
_CL_CODES = {-5: "CL_OUT_OF_RESOURCES", -6: "CL_OUT_OF_HOST_MEMORY", -11: "CL_BUILD_PROGRAM_FAILURE",
             -30: "CL_INVALID_VALUE", -33: "CL_INVALID_DEVICE", -42: "CL_INVALID_BINARY",
             -43: "CL_INVALID_BUILD_OPTIONS", -44: "CL_INVALID_PROGRAM"}


def parse_spills(log: str) -> dict[str, dict[str, int]]:
    """IGC's per-kernel spill lines: {kernel: {simd, regs, spill_bytes}}."""
    out = {}
    for name, simd, regs, spilled in _SPILL_RE.findall(log):
        out[name] = {"simd": int(simd), "regs": int(regs), "spill_bytes": int(spilled)}
    return out


class Ocloc:
    """One way of running ocloc: ``invoke(args, sources) -> (rc, outputs, log)``."""

    def __init__(self, mode: str, lib=None, exe: str | None = None):
        self.mode, self._lib, self._exe = mode, lib, exe
        self._lock = threading.Lock()        # in-process: one call at a time (fd redirection, IGC state)
        self._driver = self._igc = None

    # -- invocation -----------------------------------------------------------------
    def invoke(self, args: list[str], sources: dict[str, bytes] | None = None) -> tuple[int, dict[str, bytes], str]:
        sources = sources or {}
        if self.mode == "inprocess":
            with self._lock:
                return self._invoke_lib(args, sources)
        return self._invoke_exe(args, sources)

    def _invoke_lib(self, args, sources):
        lib = self._lib
        argv = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in ["ocloc", *args]])
        names = list(sources)
        n = len(names)
        bufs = [ctypes.create_string_buffer(sources[k], len(sources[k])) for k in names]
        data = (_u8p * max(n, 1))(*[ctypes.cast(b, _u8p) for b in bufs])
        lens = (ctypes.c_uint64 * max(n, 1))(*[len(sources[k]) for k in names])
        cnames = (ctypes.c_char_p * max(n, 1))(*[k.encode() for k in names])
        nout = ctypes.c_uint32()
        dout = ctypes.POINTER(_u8p)()
        lout = ctypes.POINTER(ctypes.c_uint64)()
        nmout = ctypes.POINTER(ctypes.c_char_p)()
        # ocloc also prints straight to fd 1/2: catch that into the log, keep our stdout clean
        with tempfile.TemporaryFile() as cap:
            saved = [os.dup(1), os.dup(2)]
            try:
                os.dup2(cap.fileno(), 1)
                os.dup2(cap.fileno(), 2)
                rc = lib.oclocInvoke(len(args) + 1, argv, n, data, lens, cnames, 0, None, None, None,
                                     ctypes.byref(nout), ctypes.byref(dout), ctypes.byref(lout), ctypes.byref(nmout))
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            cap.seek(0)
            printed = cap.read().decode("utf-8", "replace")
        outputs = {}
        try:
            for i in range(nout.value):
                outputs[nmout[i].decode("utf-8", "replace")] = ctypes.string_at(dout[i], lout[i])
        finally:
            lib.oclocFreeOutput(ctypes.byref(nout), ctypes.byref(dout), ctypes.byref(lout), ctypes.byref(nmout))
        log = outputs.pop("stdout.log", b"").decode("utf-8", "replace")
        return int(rc), outputs, (log + ("\n" + printed if printed.strip() else "")).strip()

    def _invoke_exe(self, args, sources):
        with tempfile.TemporaryDirectory(prefix="kernbin-ocloc-") as tmp:
            for name, data in sources.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            before = set(os.listdir(tmp))
            proc = subprocess.run([self._exe, *args], cwd=tmp, capture_output=True, timeout=600)
            outputs = {}
            for name in set(os.listdir(tmp)) - before:
                p = os.path.join(tmp, name)
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        outputs[name] = f.read()
            log = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
            return proc.returncode, outputs, log

    # -- facts ------------------------------------------------------------------------
    def driver_version(self) -> str:
        if self._driver is None:
            rc, outs, _ = self.invoke(["query", "OCL_DRIVER_VERSION"])
            raw = outs.get("OCL_DRIVER_VERSION", b"unknown") if rc == 0 else b"unknown"
            self._driver = raw.split(b"\0")[0].decode("utf-8", "replace").strip() or "unknown"
        return self._driver

    def igc_version(self) -> str:
        """IGC's version, read from the library that ocloc loads (its build path names it)."""
        if self._igc is None:
            self._igc = _igc_version()
        return self._igc

    def known_devices(self) -> list[str]:
        _, _, log = self.invoke(["compile", "--help"])
        m = re.search(r"<device_type> can be:\s*(.+)", log)
        if not m:
            return list(LISTED)
        names = [d.strip() for d in m.group(1).split(",")]
        return [d.split()[0] for d in names if d and d.split()[0] not in ("version", "or")]

    def ip_version(self, device: str) -> str:
        rc, _, log = self.invoke(["ids", device])
        m = re.search(r"Matched ids:\s*([0-9]+\.[0-9]+\.[0-9]+)", log)
        if rc != 0 or not m:
            known = ", ".join(self.known_devices())
            raise TargetError(f"ocloc does not know device {device!r}; it accepts: {known} "
                              f"(or an IP version like 12.60.7, or a PCI id like 0x0bd5)")
        return m.group(1)


def _igc_version() -> str:
    path = None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libigc.so" in line:
                    path = line.split()[-1]
                    break
    except OSError:
        pass
    if path is None:
        found = ctypes.util.find_library("igc")
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
            if found and os.path.exists(os.path.join(d, found)):
                path = os.path.join(d, found)
                break
    if path is None:
        return "unknown"
    try:
        import mmap
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            m = re.search(rb"intel-graphics-compiler-([0-9]+\.[0-9]+\.[0-9]+(?:\.[0-9]+)?)", mm)
            if m:
                return m.group(1).decode()
        st = os.stat(path)
        return f"{os.path.basename(os.path.realpath(path))}:{st.st_size}"
    except OSError:
        return "unknown"


_ocloc: Ocloc | None = None


def get_ocloc() -> Ocloc:
    """The ocloc to use in this process (in-process library first, then the command)."""
    global _ocloc
    if _ocloc is not None:
        return _ocloc
    mode = os.environ.get("KERNBIN_OCLOC", "auto").lower()
    if mode not in ("auto", "inprocess", "subprocess"):
        raise KernbinError(f"KERNBIN_OCLOC={mode!r}: use auto, inprocess or subprocess")
    tried = []
    if mode in ("auto", "inprocess"):
        libname = os.environ.get("KERNBIN_OCLOC_LIB", "libocloc.so")
        try:
            lib = ctypes.CDLL(libname)
            lib.oclocInvoke.restype = ctypes.c_int
            lib.oclocFreeOutput.restype = ctypes.c_int
            _ocloc = Ocloc("inprocess", lib=lib)
            return _ocloc
        except (OSError, AttributeError) as e:
            tried.append(f"{libname}: {e}")
    if mode in ("auto", "subprocess"):
        exe = shutil.which("ocloc")
        if exe:
            _ocloc = Ocloc("subprocess", exe=exe)
            return _ocloc
        tried.append("no `ocloc` on PATH")
    raise RuntimeNotFound(f"ocloc not found ({'; '.join(tried)}); {INSTALL_HINT}")


def _device_id(oc: Ocloc, name: str, ips: tuple[str, ...]) -> DeviceId:
    return DeviceId(backend=BACKEND, vendor="Intel(R) Corporation", name=name, arch=",".join(ips),
                    driver_version=oc.driver_version(), compiler_version=f"IGC {oc.igc_version()}",
                    facts={"ip_version": ips[0]} if len(ips) == 1 else {"ip_versions": list(ips)})


class OclocBackend(Backend):
    """Offline Intel GPU builds (SPIR-V -> zebin, or a fat archive for several devices)."""
    name = BACKEND
    offline = True
    register_file_flags = _intel.OCLOC_REGISTER_FILE_FLAGS
    register_file_spellings = _intel.REGISTER_FILE_SPELLINGS

    def __init__(self):
        self._open: dict[str, OclocDevice] = {}

    def list_devices(self) -> list[DeviceInfo]:
        try:
            oc = get_ocloc()
        except RuntimeNotFound:
            return []
        out = []
        for name in LISTED:
            try:
                ip = oc.ip_version(name)
            except KernbinError:
                continue
            out.append(DeviceInfo(target=f"ocloc:{name}", id=_device_id(oc, name, (ip,)), type="gpu (offline)",
                                  usable=True, note="builds only",
                                  details={"spirv": ["1.0", "1.1", "1.2", "1.3", "1.4"], "mode": oc.mode}))
        return out

    def open(self, target: Target) -> "OclocDevice":
        """The offline compiler set up for one device (or several: one fat archive)."""
        dev = self._open.get(target.selector)
        if dev is None:
            oc = get_ocloc()
            names = tuple(target.selector.split(","))
            if len(set(names)) != len(names):
                raise TargetError(f"{target}: a device is named twice", str(target))
            dev = self._open[target.selector] = OclocDevice(self, target, oc, names,
                                                            tuple(oc.ip_version(n) for n in names))
        return dev

    def can_run(self, info, device: "OclocDevice") -> Fit:
        return Fit(False, f"{device.target} is an offline target: load on a level-zero or opencl device",
                   "offline")


class OclocDevice(Device):
    def __init__(self, backend: OclocBackend, target: Target, oc: Ocloc, names: tuple[str, ...],
                 ips: tuple[str, ...]):
        self.backend, self.target, self.ocloc, self.names, self.ips = backend, target, oc, names, ips
        self.name = ",".join(names)
        self.id = _device_id(oc, self.name, ips)

    @property
    def handle(self):
        """The :class:`Ocloc` runner (in-process library or command)."""
        return self.ocloc

    @property
    def toolchain(self) -> Toolchain:
        from .. import __version__
        return Toolchain(BACKEND, f"IGC {self.ocloc.igc_version()}", self.ocloc.driver_version(),
                         {"kernbin": __version__, "ocloc": self.ocloc.driver_version(),
                          "igc": self.ocloc.igc_version(), "ocloc_mode": self.ocloc.mode})

    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        options = " ".join(flags)
        if ir.kind != "spirv":
            raise BuildError(BACKEND, "ocloc compile", None, None, f"ocloc builds SPIR-V, not {ir.kind}",
                             options=options)
        args = ["compile", "-file", "kernel.spv", "-spirv_input", "-device", self.name, "--format", "zebin",
                "-exclude_ir", "-output", "kernel", "-output_no_suffix"]
        if options:
            args += ["-options", options]
        call = "oclocInvoke(compile)" if self.ocloc.mode == "inprocess" else "ocloc compile"
        t0 = time.perf_counter()
        rc, outputs, log = self.ocloc.invoke(args, {"kernel.spv": ir.data})
        seconds = time.perf_counter() - t0
        binary = outputs.get("kernel") or outputs.get("kernel.ar")
        if rc != 0 or not binary:
            raise BuildError(BACKEND, call, rc, _CL_CODES.get(rc), f"build for {self.name} failed", log=log,
                             options=options)
        fat = len(self.names) > 1
        extra = {}
        if fat:
            archive = zefmt.read_ar(binary)
            members = {n: b for n, b in archive.items() if zefmt.is_zebin(b)}
            parsed = [zefmt.parse_zebin(b) for b in members.values()]
            z = parsed[0]
            requires = zefmt.requirements(binary)
            extra["generic_ir_member"] = zefmt.GENERIC_IR in archive
            has_ir = any(p.has_ir for p in parsed)
        else:
            z = zefmt.parse_zebin(binary)
            requires = zefmt.requirements(binary, self.name, self.ips[0])
            has_ir = z.has_ir
        spills = parse_spills(log)
        kernels = []
        for k in z.kernels:
            attrs = k.attributes()
            attrs["spill_bytes"] = spills.get(k.name, {}).get("spill_bytes", 0)
            kernels.append(KernelInfo(k.name, attrs))
        info = BuildInfo(
            target=str(self.target), toolchain=self.toolchain, requires=requires, ir_kind=ir.kind,
            ir_sha256=ir.sha256, options=BuildOptions(tuple(flags)), flags=tuple(flags),
            binary_format="zebin-fat" if fat else "zebin", kernels=tuple(kernels), built_on=self.id.describe(),
            build_log=log, build_seconds=round(seconds, 6),
            extra={"ir_embedded_in_binary": has_ir, **extra, **{f"note_{k}": v for k, v in z.notes.items()}})
        return NativeBinary(binary=binary, info=info, ir=ir)

    def load_native(self, native: NativeBinary, payload: bytes | None = None):
        raise OfflineTarget(str(self.target), "load on a level-zero or opencl GPU target of this kind")
