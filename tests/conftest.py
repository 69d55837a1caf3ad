import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

# kernbin writes its ICD vendors directory under KERNBIN_CACHE_DIR; keep tests out of $HOME.
os.environ.setdefault("KERNBIN_CACHE_DIR", tempfile.mkdtemp(prefix="kernbin-test-cache-"))

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _build_ze_driver():
    """Build the Level Zero CPU test driver and point the loader at it (ZE_ENABLE_ALT_DRIVERS),
    for this process and every subprocess the tests start. Never the GPU driver: on a machine
    without the GPU, Debian's libze_intel_gpu can crash the loader. Returns (path, error)."""
    script = os.path.join(ROOT, "tools", "ze_cpu_driver", "build.sh")
    out = os.path.join(ROOT, "build", "ze_cpu_driver", "libze_kernbin_cpu.so")
    try:
        p = subprocess.run(["bash", script, out], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if p.returncode != 0:
        return None, (p.stderr or p.stdout).strip()[-800:]
    return p.stdout.strip().splitlines()[-1], None


ZE_DRIVER, ZE_DRIVER_ERROR = _build_ze_driver()
if ZE_DRIVER:
    os.environ["ZE_ENABLE_ALT_DRIVERS"] = ZE_DRIVER
else:
    os.environ.pop("ZE_ENABLE_ALT_DRIVERS", None)


@pytest.fixture
def rng():
    return np.random.default_rng()


_cpu = None


def _open_cpu():
    global _cpu
    if _cpu is None:
        import kernbin
        try:
            _cpu = kernbin.open_device("opencl:cpu")
        except kernbin.KernbinError as e:
            _cpu = e
    return _cpu


@pytest.fixture
def cpu():
    """The real Intel CPU OpenCL device; skips (with the reason) when it is not installed."""
    dev = _open_cpu()
    if isinstance(dev, Exception):
        pytest.skip(f"no OpenCL CPU device with SPIR-V support: {dev}")
    return dev


def run_py(code: str, env=None, **kw) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process with kernbin importable."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          cwd=ROOT, timeout=300, **kw)


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kernbin", *args], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=600)


_RELOAD = """
import json, sys, numpy as np, kernbin
from kernbin.samples import SAMPLES
out = {}
for name, s in SAMPLES.items():
    m = kernbin.load(f"{sys.argv[1]}/{name}.knb", sys.argv[2], fallback=False)
    L = s.setup(np.random.default_rng())
    m.kernel(s.kernel).launch(L.global_size, L.local_size, *L.args)
    out[name] = [m.source, L.correct()]
print(json.dumps(out))
"""


def reload_samples_in_fresh_process(natives: dict, target: str, tmp_path) -> dict:
    """Save every sample's binary (without IR), load each natively in a new process on ``target``,
    run it on fresh inputs: {name: [source, correct]}."""
    import json
    for name, native in natives.items():
        native.without_ir().save(tmp_path / f"{name}.knb")
    p = subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path), target], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def spirv_igc_refuses() -> bytes:
    """The vadd sample with the first instruction after its OpLabel turned into an unknown opcode:
    it reads as SPIR-V, and IGC refuses it with a build log."""
    from kernbin.samples import SAMPLES
    with open(SAMPLES["vadd"].spv, "rb") as f:
        data = f.read()
    words = list(struct.unpack(f"<{len(data) // 4}I", data))
    i, label = 5, None
    while i < len(words):
        wc, op = words[i] >> 16, words[i] & 0xFFFF
        if label is not None:
            words[i] = (wc << 16) | 0x7FFF
            break
        if op == 248:                       # OpLabel
            label = i
        i += wc
    return struct.pack(f"<{len(words)}I", *words)


@pytest.fixture(scope="module")
def l0():
    """The Level Zero device of the project's CPU test driver, through the real loader."""
    if not ZE_DRIVER:
        pytest.skip(f"the Level Zero CPU test driver did not build: {ZE_DRIVER_ERROR}")
    import kernbin
    try:
        return kernbin.open_device("level-zero:0")
    except kernbin.KernbinError as e:
        pytest.skip(f"no Level Zero device through the loader: {e}")
