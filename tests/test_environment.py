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
