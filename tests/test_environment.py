"""No runtime at import; a clear error when no OpenCL device exists."""
import json

from conftest import run_cli, run_py


def test_import_loads_no_runtime():
    p = run_py("import kernbin", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert p.returncode == 0, p.stderr
    imported = [line.split("|")[-1].strip() for line in p.stderr.splitlines() if "|" in line]
    assert "kernbin" in imported
    heavy = [m for m in imported if m.split(".")[0] in ("pyopencl", "numpy", "cuda", "redis", "rich",
                                                        "elftools", "yaml", "matplotlib")]
    assert heavy == []


def test_no_opencl_device_gives_a_clear_error(tmp_path):
    empty = tmp_path / "vendors"
    empty.mkdir()
    env = {"OCL_ICD_VENDORS": str(empty)}   # kernbin respects the user's choice: no ICD at all
    p = run_py("import kernbin\ntry:\n    kernbin.open_device('opencl:cpu')\n"
               "except kernbin.RuntimeNotFound as e:\n    print('RNF', e)", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("RNF") and "pip install intel-opencl-rt" in p.stdout
    p = run_cli("devices", "--json", env=env)
    assert p.returncode == 0 and [d for d in json.loads(p.stdout) if d["backend"] == "opencl"] == []
    p = run_cli("build", "kernbin/samples/vadd.spv", "-o", str(tmp_path / "x.knb"), env=env)
    assert p.returncode == 1
    assert "no OpenCL CPU device" in p.stderr and "intel-opencl-rt" in p.stderr
    assert "Traceback" not in p.stderr


def test_kernbin_without_pyopencl_builds_cuda_and_names_the_extra_for_opencl(tmp_path):
    """pyopencl is the `opencl` extra (and `cpu`), not a base dependency: kernbin imports and builds
    for CUDA offline without it, and an OpenCL target says which extra to install."""
    import subprocess
    import sys
    code = r"""
import sys, json
sys.modules["pyopencl"] = None                  # as if it were not installed
import kernbin
out = {}
try:
    kernbin.open_device("opencl:cpu")
except kernbin.RuntimeNotFound as e:
    out["opencl"] = str(e)
try:
    nb = kernbin.build(kernbin.samples.SAMPLES["vadd"].ptx, "cuda:sm_90")
    out["cuda"] = dict(nb.info.kernels[0].attributes)
except kernbin.RuntimeNotFound as e:
    out["cuda"] = None
out["pyopencl_loaded"] = sys.modules.get("pyopencl") is not None
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    import json
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert "kernbin[opencl]" in out["opencl"] and not out["pyopencl_loaded"]
    if out["cuda"] is not None:                 # the cuda extra is installed here (the test extra has it)
        assert "registers" in out["cuda"]
