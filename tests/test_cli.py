"""The kernbin command, run as a user would, in fresh processes."""
import json

import pytest

from kernbin.samples import SAMPLES

from conftest import run_cli


@pytest.fixture(scope="module")
def knb(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "matmul.knb"
    p = run_cli("build", SAMPLES["matmul"].spv, "--target", "opencl:cpu", "-o", str(out), "--json")
    if p.returncode != 0 and "no OpenCL" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stderr
    meta = json.loads(p.stdout)
    assert meta["kernels"] == ["matmul"] and meta["bytes"] > 0
    return out


def test_devices_json():
    p = run_cli("devices", "--json")
    assert p.returncode == 0, p.stderr
    devices = json.loads(p.stdout)
    for d in devices:
        assert {"target", "type", "name", "arch", "driver_version", "fingerprint", "usable"} <= d.keys()


def test_inspect_knb(knb):
    p = run_cli("inspect", str(knb), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["kind"] == "knb" and info["binary_format"] == "opencl-cpu-elf"
    assert info["ir"]["embedded"] is True
    k = info["kernels"][0]
    assert k["name"] == "matmul" and k["local_mem_size"] == 2048
    assert ".ocl.obj" in info["container"]["sections"]
    assert "matmul" in info["container"]["symbols"][0] or any("matmul" in s for s in info["container"]["symbols"])
    human = run_cli("inspect", str(knb))
    assert human.returncode == 0 and "matmul" in human.stdout


def test_inspect_spirv():
    p = run_cli("inspect", SAMPLES["softmax"].spv, "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout)["kernels"] == [{"name": "softmax"}]


def test_check_ok_and_json(knb):
    p = run_cli("check", str(knb), "--target", "opencl:cpu", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["ok"] is True and res["verdict"] == "native" and res["kernels"][0]["name"] == "matmul"


def test_check_corrupt_file_exits_nonzero_with_one_line(knb, tmp_path):
    data = bytearray(knb.read_bytes())
    data[-3000] ^= 0xFF
    bad = tmp_path / "bad.knb"
    bad.write_bytes(bytes(data))
    p = run_cli("check", str(bad))
    assert p.returncode == 2
    assert p.stdout.count("\n") == 1 and "refused it before the driver" in p.stdout
    p = run_cli("check", str(bad), "--json")
    res = json.loads(p.stdout)
    assert p.returncode == 2 and res["verdict"] == "gate" and res["rule"] == "section-digest"


def test_errors_are_one_line_without_traceback(tmp_path):
    junk = tmp_path / "junk.spv"
    junk.write_bytes(b"\x03\x02\x23\x07" + b"\x00" * 3)
    p = run_cli("build", str(junk), "-o", str(tmp_path / "x.knb"))
    assert p.returncode == 1
    assert p.stderr.startswith("kernbin: error: invalid IR") and "Traceback" not in p.stderr
    p = run_cli("inspect", str(tmp_path / "missing.knb"))
    assert p.returncode == 1 and "No such file" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("build", SAMPLES["vadd"].spv, "-o", str(tmp_path / "x.knb"), "--target", "vulkan:0")
    assert p.returncode == 1 and "unknown backend" in p.stderr
    p = run_cli("--debug", "build", str(junk), "-o", str(tmp_path / "x.knb"))
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_build_log_is_shown_on_failure(tmp_path):
    p = run_cli("build", SAMPLES["vadd"].spv, "-o", str(tmp_path / "x.knb"), "--options=-cl-bogus")
    if "no OpenCL" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 1
    assert "CL_INVALID_BUILD_OPTIONS" in p.stderr.splitlines()[0]
    assert "build log" in p.stderr and "-cl-bogus" in p.stderr


def test_help_explains_every_command():
    p = run_cli("--help")
    assert p.returncode == 0
    for cmd in ("devices", "build", "inspect", "check", "bench"):
        assert cmd in p.stdout


def test_bench_json_small(tmp_path):
    png = tmp_path / "bench.png"
    p = run_cli("bench", "--repeat", "1", "--kernels", "vadd,reduce", "--json", "--plot", str(png))
    if "no OpenCL" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["target"] == "opencl:cpu"
    assert [k["name"] for k in rep["kernels"]] == ["vadd", "reduce"]
    for k in rep["kernels"]:
        assert {"name", "ir_s", "native_s", "raw_native_s", "ratio", "correct"} <= k.keys()
        assert k["correct"] is True and k["ir_s"] > 0 and k["native_s"] > 0
        assert k["ratio"] == pytest.approx(k["ir_s"] / k["native_s"])
    assert rep["ratio"] == pytest.approx(sum(k["ir_s"] for k in rep["kernels"]) /
                                         sum(k["native_s"] for k in rep["kernels"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_goes_through_the_cache_and_cache_commands(tmp_path):
    env = {"KERNBIN_CACHE_DIR": str(tmp_path / "cache")}
    out = str(tmp_path / "v.knb")
    first = run_cli("build", SAMPLES["vadd"].spv, "-o", out, "--json", env=env)
    if "no OpenCL" in first.stderr:
        pytest.skip(first.stderr.strip())
    assert first.returncode == 0, first.stderr
    second = run_cli("build", SAMPLES["vadd"].spv, "-o", out, "--json", env=env)
    assert json.loads(first.stdout)["cache_hit"] is False and json.loads(second.stdout)["cache_hit"] is True
    assert json.loads(first.stdout)["sha256"] == json.loads(second.stdout)["sha256"]
    bypass = run_cli("build", SAMPLES["vadd"].spv, "-o", out, "--json", "--no-cache", env=env)
    assert json.loads(bypass.stdout)["cache_hit"] is False
    stats = json.loads(run_cli("cache", "stats", "--json", env=env).stdout)
    assert {k: stats[k] for k in ("entries", "hits", "misses", "builds", "corrupt")} == \
        {"entries": 1, "hits": 1, "misses": 1, "builds": 1, "corrupt": 0}
    assert stats["bytes"] > 0
    listing = json.loads(run_cli("cache", "ls", "--verify", "--json", env=env).stdout)
    assert len(listing) == 1 and listing[0]["valid"] and listing[0]["kernels"] == ["vadd"]
    pruned = json.loads(run_cli("cache", "prune", "--max-size", "0", "--json", env=env).stdout)
    assert pruned["evicted"] == [listing[0]["key"]]
    assert json.loads(run_cli("cache", "stats", "--json", env=env).stdout)["entries"] == 0
    assert run_cli("cache", "clear", env=env).returncode == 0
    assert "bad size" in run_cli("cache", "prune", "--max-size", "huge", env=env).stderr


def test_build_canonicalises_targets_once(tmp_path):
    p = run_cli("build", SAMPLES["vadd"].spv, "-t", "OpenCL:CPU", "-t", "opencl:cpu", "-o", str(tmp_path / "d"))
    assert p.returncode == 1 and "given twice" in p.stderr and "Traceback" not in p.stderr
