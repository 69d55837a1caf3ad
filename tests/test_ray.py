"""Distributed builds (``--executor ray``) on a real local Ray cluster, started here with
``ray start --head`` and stopped at the end: the same bundle as a local build, a failed build
reported with its log while the others land, answers that are not what was asked refused."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import pytest

import kernbin
from kernbin import BuildError, InvalidBinary, OptionsError
from kernbin.executors import BuildJob, error_from_json, error_to_json, expected_key, get_executor, verify_result
from kernbin.options import BuildOptions
from kernbin.samples import SAMPLES

from conftest import run_cli, run_py, spirv_igc_refuses

TARGETS = ["ocloc:pvc", "ocloc:acm-g10", "ocloc:tgllp"]
SPVS = [s.spv for s in SAMPLES.values()]


def _need_ocloc():
    try:
        from kernbin.backends.ocloc import get_ocloc
        get_ocloc()
    except kernbin.RuntimeNotFound as e:
        pytest.skip(f"ocloc not installed (Debian: intel-opencl-icd): {e}")


def _session(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster of 2 CPUs in its own session, with its own kernbin cache (so its
    workers really build); this process connects to it. Yields the address."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'kernbin[ray]')")
    _need_ocloc()
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(exe):
        pytest.skip("the ray command is not installed next to this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="kbray")         # short: Ray's socket paths live under it
    env = dict(os.environ, KERNBIN_CACHE_DIR=os.path.join(tmp, "worker-cache"), RAY_USAGE_STATS_ENABLED="0")
    log = open(os.path.join(tmp, "ray-start.log"), "w")
    proc = subprocess.Popen([exe, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={tmp}/ray", "--object-store-memory=100000000",
                             "--block"], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("ray start failed: " + open(log.name).read()[-2000:])
                time.sleep(0.2)
        import logging
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        yield address
    finally:
        ray.shutdown()
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):    # only this cluster's processes
            for pid in _session(proc.pid):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            end = time.monotonic() + wait
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.1)
            if proc.poll() is not None and not _session(proc.pid):
                break
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _entries(path) -> dict:
    with kernbin.open_bundle(path) as b:
        return {(name, e.target): b.native(e) for name in b.names for e in b.entries(name)} | \
            {(name, "ir"): b.ir(name) for name in b.names}


def test_a_bundle_built_on_ray_is_the_local_bundle(cluster, tmp_path):
    local = tmp_path / "local.kbin"
    remote = tmp_path / "ray.kbin"
    kernbin.create_bundle(local, SPVS, TARGETS, jobs=2)
    seen = []
    report = kernbin.create_bundle(remote, SPVS, TARGETS, executor=f"ray={cluster}", progress=seen.append)
    assert sorted(seen) == sorted(TARGETS * len(SPVS))
    assert report == {name: {t: False for t in TARGETS} for name in SAMPLES}     # built by the workers
    a, b = _entries(local), _entries(remote)
    assert a.keys() == b.keys() and len(a) == len(SAMPLES) * (len(TARGETS) + 1)
    for k in a:
        if k[1] == "ir":
            assert a[k].data == b[k].data
            continue
        assert a[k].binary == b[k].binary, k                      # the same native bytes, entry by entry
        x, y = a[k].info, b[k].info
        assert (x.target, x.toolchain, x.requires, x.flags, x.kernels, x.options, x.device_fingerprint) == \
               (y.target, y.toolchain, y.requires, y.flags, y.kernels, y.options, y.device_fingerprint)


def test_a_failed_build_is_reported_with_its_log_and_the_others_land(cluster, tmp_path):
    """The same on both executors: every job runs to its end, the first failure is raised as a
    BuildError with ocloc's log, no bundle is written, and the other builds are in the cache that
    built them (a second run finds them all)."""
    inputs = [SAMPLES["vadd"].spv, spirv_igc_refuses(), SAMPLES["softmax"].spv]
    names = ["vadd", "broken", "softmax"]
    targets = TARGETS[:2]
    errors = {}
    for executor in ("process", f"ray={cluster}"):
        out = tmp_path / f"{executor[:3]}.kbin"
        with pytest.raises(BuildError) as e:
            kernbin.create_bundle(out, inputs, targets, "-cl-fast-relaxed-math", names=names, jobs=2,
                                  executor=executor)
        assert not out.exists()
        errors[executor[:3]] = e.value
        again = kernbin.create_bundle(out, [inputs[0], inputs[2]], targets, "-cl-fast-relaxed-math", jobs=2,
                                      executor=executor)
        assert again == {"vadd": {t: True for t in targets}, "softmax": {t: True for t in targets}}, executor
    for e in errors.values():
        assert e.backend == "ocloc" and e.code == -11 and e.code_name == "CL_BUILD_PROGRAM_FAILURE"
        assert "does not support the following opcode" in e.log and e.options == "-cl-fast-relaxed-math"
    p, r = errors["pro"], errors["ray"]
    assert (type(p), p.call, p.log, str(p)) == (type(r), r.call, r.log, str(r))


def _tamper_work(*args):
    """A worker that answers with a flipped byte in the native code."""
    from kernbin.api import _build_job
    data, hit = _build_job(*args)
    data = bytearray(data)
    data[len(data) // 2] ^= 0x40
    return bytes(data), hit


def test_a_worker_answering_tampered_bytes_is_refused(tmp_path):
    _need_ocloc()
    nb = kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc")
    job = BuildJob(nb.ir, "ocloc:pvc", BuildOptions.of(None))
    key = expected_key(job)
    good = nb.to_bytes()
    assert verify_result(good, job, key).binary == nb.binary
    assert verify_result(nb.without_ir().to_bytes(), job, key).ir == nb.ir          # the asked IR attached

    def refused(data, rule, j=job):
        with pytest.raises(InvalidBinary) as e:
            verify_result(data, j, key)
        assert e.value.rule == rule, e.value
    flipped = bytearray(good)
    flipped[good.find(nb.binary[200:240]) + 7] ^= 1
    refused(bytes(flipped), "section-digest")
    refused(good[:-9], "truncated")
    # honest containers, but not what was asked: another target, IR, options; another toolchain
    refused(kernbin.build(SAMPLES["vadd"].spv, "ocloc:tgllp").to_bytes(), "build-mismatch")
    refused(kernbin.build(SAMPLES["softmax"].spv, "ocloc:pvc").to_bytes(), "build-mismatch")
    refused(kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc", "-cl-mad-enable").to_bytes(), "build-mismatch")
    forged = replace(nb, info=replace(nb.info, toolchain=replace(nb.info.toolchain, compiler="IGC 0.0.1")))
    verify_result(forged.to_bytes(), job)                     # the request fields alone match ...
    refused(forged.to_bytes(), "build-mismatch")              # ... the key computed here does not
    # end to end: the worker's bytes are checked before they reach the bundle
    from kernbin.executors import ProcessExecutor, run_jobs
    with pytest.raises(InvalidBinary) as e:
        run_jobs(ProcessExecutor(1), _tamper_work, [job])
    assert e.value.rule == "section-digest"


def test_a_ray_worker_answering_tampered_bytes_is_refused(cluster, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])    # workers do not import the tests
    from kernbin.executors import RayExecutor, run_jobs
    nb = kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc")
    jobs = [BuildJob(nb.ir, t, BuildOptions.of(None)) for t in TARGETS[:2]]
    try:
        with pytest.raises(InvalidBinary) as e:
            run_jobs(RayExecutor(cluster), _tamper_work, jobs)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert e.value.rule == "section-digest"


def test_cli_bundle_create_on_ray(cluster, tmp_path):
    out = tmp_path / "cli.kbin"
    p = run_cli("bundle", "create", str(out), "-t", "ocloc:pvc", "-t", "ocloc:tgllp", SAMPLES["reduce"].spv,
                SAMPLES["matmul"].spv, "--executor", f"ray={cluster}", "--json")
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)["kernels"]) == {"reduce", "matmul"}
    with kernbin.open_bundle(out) as b:
        assert b.targets("matmul") == ("ocloc:pvc", "ocloc:tgllp")
        b.verify()
    p = run_cli("bundle", "create", str(tmp_path / "x.kbin"), "-t", "ocloc:pvc", SAMPLES["reduce"].spv,
                "--executor", "dask")
    assert p.returncode == 1 and "unknown executor" in p.stderr
    with socket.socket() as s:                     # nobody listens there: an error now, not minutes of retries
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    p = run_cli("bundle", "create", str(tmp_path / "x.kbin"), "-t", "ocloc:pvc", SAMPLES["reduce"].spv,
                "--executor", f"ray=127.0.0.1:{closed}")
    assert p.returncode == 1 and "cannot connect to the Ray cluster" in p.stderr.splitlines()[0]
    assert not (tmp_path / "x.kbin").exists()


def test_executor_spellings():
    assert get_executor(None).name == get_executor("process").name == "process"
    assert get_executor("ray").address is None and get_executor("ray=10.0.0.1:6379").address == "10.0.0.1:6379"
    for bad in ("ray=", "dask", 3):
        with pytest.raises(OptionsError) as e:
            get_executor(bad)
        assert e.value.field == "executor"


def test_errors_cross_as_data():
    e = BuildError("ocloc", "oclocInvoke", -11, "CL_BUILD_PROGRAM_FAILURE", "vadd", log="line 1\nline 2",
                   options="-cl-mad-enable")
    back = error_from_json(json.loads(json.dumps(error_to_json(e))))
    assert type(back) is BuildError and str(back) == str(e)
    assert (back.backend, back.call, back.code, back.code_name, back.log, back.options) == \
           ("ocloc", "oclocInvoke", -11, "CL_BUILD_PROGRAM_FAILURE", "line 1\nline 2", "-cl-mad-enable")
    assert type(error_from_json({"type": "os.system", "args": ["x"]})) is kernbin.KernbinError
    assert type(error_from_json(None)) is kernbin.KernbinError


def test_ray_is_imported_only_when_chosen():
    code = ("import sys, kernbin\nfrom kernbin.samples import SAMPLES\n"
            "kernbin.build_many(SAMPLES['vadd'].spv, ['ocloc:pvc'], use_cache=False)\n"
            "print('ray' in sys.modules)\n"
            "sys.modules['ray'] = None\n"
            "try:\n    kernbin.build_many(SAMPLES['vadd'].spv, ['ocloc:pvc'], executor='ray')\n"
            "except kernbin.RuntimeNotFound as e:\n    print('RNF', e)\n")
    _need_ocloc()
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "False" and lines[1].startswith("RNF") and "kernbin[ray]" in lines[1]


def test_a_worker_that_dies_or_raises_fails_its_job_only(tmp_path):
    """A worker process killed mid-build (BrokenProcessPool) or raising a non-kernbin error becomes
    a KernbinError for its job; every job still reports (none is lost to the exception)."""
    from kernbin.executors import ProcessExecutor, _answer, _call
    ok = _answer(_call(_work_ok, b"x"))
    assert ok == (b"x", False)
    err = _answer(_call(_work_oserror, b"x"))
    assert isinstance(err, kernbin.KernbinError) and "No space left" in str(err)
    jobs = [_FakeJob(b"a"), _FakeJob(b"die"), _FakeJob(b"b")]
    answers = ProcessExecutor(jobs=2).run(_work_dies, jobs)
    assert len(answers) == 3 and all(a is not None for a in answers)
    assert any(isinstance(a, kernbin.KernbinError) and "worker process" in str(a) for a in answers)


def test_rebuilt_errors_cannot_shadow_methods_or_break_str():
    from kernbin.executors import error_from_json
    e = error_from_json({"type": "BuildError", "args": ["boom"],
                         "attrs": {"add_note": 1, "args": 5, "with_traceback": 2, "log": 7, "rule": "r"}})
    assert isinstance(e, kernbin.BuildError) and callable(e.add_note) and e.args == ("boom",)
    assert e.rule == "r" and e.log is None
    str(e)                                    # reads options/log: class defaults, no AttributeError
    e.add_note("still works")


class _FakeJob:
    def __init__(self, data):
        self.target = "opencl:cpu"
        self.args = (data,)


def _work_ok(data):
    return data, False


def _work_oserror(data):
    raise OSError(28, "No space left on device")


def _work_dies(data):
    if data == b"die":
        os._exit(9)
    return data, False
