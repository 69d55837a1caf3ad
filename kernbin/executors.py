"""Where the builds of :func:`kernbin.build_many` and :func:`kernbin.create_bundle` run.

One small interface, :class:`Executor` (``run(work, jobs, on_done)``), two implementations:

- :class:`ProcessExecutor` (the default, ``"process"``): local worker processes (spawned: offline
  compilers keep global state and are not safe in threads); one job, or ``jobs=1``, runs in this
  process.
- :class:`RayExecutor` (``"ray"`` or ``"ray=ADDRESS"``): every build is a task on a Ray cluster. Each
  worker builds through its own kernbin cache; Ray is imported only when this executor runs
  (``pip install 'kernbin[ray]'``).

Whatever the executor, a job's answer crosses back as data (``.knb`` bytes and a cache-hit flag, or
the :class:`~kernbin.errors.KernbinError` it raised as a JSON-able dict: no exception is pickled) and
is verified here before anyone uses it (:func:`verify_result`): the full ``.knb`` verification, then
its build info against the request (IR digest, target, options) and, for a remote executor, against
the cache key computed on this machine (same toolchain, same device fingerprint). Every job runs to
its end whatever the others do (a success is in the cache that built it); then the first failure, in
job order, is raised (a :class:`~kernbin.errors.BuildError` keeps its backend, call, code and log).

This module owns no build logic: the caller (:mod:`kernbin.api`) hands in the ``work`` function, a
module-level function that workers import by name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

from .artifact import NativeBinary
from .errors import InvalidBinary, KernbinError, OptionsError, RuntimeNotFound
from .ir import IR
from .options import BuildOptions

__all__ = ["BuildJob", "Executor", "ProcessExecutor", "RayExecutor", "get_executor", "run_jobs",
           "verify_result", "expected_key", "error_to_json", "error_from_json"]


@dataclass(frozen=True)
class BuildJob:
    """One build: this IR for this (canonical) target with these options, through the cache or not."""
    ir: IR
    target: str
    options: BuildOptions
    use_cache: bool = True

    @property
    def args(self) -> tuple:
        """The plain-data arguments of the ``work`` function: (IR bytes, IR kind, target, options
        as JSON, use_cache)."""
        return (self.ir.data, self.ir.kind, self.target, self.options.to_json(), self.use_cache)


class Executor(Protocol):
    """Runs build jobs somewhere.

    ``run(work, jobs, on_done)`` calls ``work(*job.args)`` (which returns ``(.knb bytes, cache_hit)``)
    for every job and returns, in job order, ``(bytes, hit)`` or the :class:`KernbinError` that job
    raised (rebuilt from data with :func:`error_from_json`). ``on_done(i)`` is called in this process
    as job ``i`` finishes. Every job runs to its end; a failure cancels nothing. ``remote`` says the
    answers come from other machines (they are then also checked against the cache key computed
    here)."""
    name: str
    remote: bool

    def run(self, work: Callable, jobs: Sequence[BuildJob], on_done: Callable[[int], None] | None = None) -> list:
        ...


# -- the answer of one job, as data ----------------------------------------------------------------

def _call(work, *args) -> dict:
    """Run one job where the executor put it; the answer is plain data (a KernbinError included)."""
    try:
        data, hit = work(*args)
    except KernbinError as e:
        return {"ok": False, "error": error_to_json(e)}
    except Exception as e:                  # noqa: BLE001 - an OSError (disk full), a bug: still data
        return {"ok": False, "error": {"type": "KernbinError", "args": [f"{type(e).__name__}: {e}"]}}
    return {"ok": True, "data": bytes(data), "hit": bool(hit)}


def _answer(obj) -> "tuple[bytes, bool] | KernbinError":
    if not isinstance(obj, dict):
        return KernbinError(f"a build worker answered {type(obj).__name__}, not a result")
    if obj.get("ok") is True and isinstance(obj.get("data"), bytes) and isinstance(obj.get("hit"), bool):
        return obj["data"], obj["hit"]
    return error_from_json(obj.get("error"))


def _plain(v) -> bool:
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v)


def error_to_json(e: KernbinError) -> dict:
    """A KernbinError as JSON-able data: its class (the nearest one of :mod:`kernbin.errors`), its
    message arguments and its plain attributes (a BuildError's backend, call, code, code name, log,
    options); attributes that are objects become None."""
    from . import errors
    name = next((c.__name__ for c in type(e).__mro__ if c.__name__ in errors.__all__
                 and issubclass(c, KernbinError)), "KernbinError")
    return {"type": name, "args": [str(a) for a in e.args],
            "attrs": {k: (list(v) if isinstance(v, tuple) else v) if _plain(v) else None
                      for k, v in vars(e).items() if isinstance(k, str) and not k.startswith("_")}}


def error_from_json(obj) -> KernbinError:
    """The KernbinError :func:`error_to_json` described: same class, message and attributes."""
    from . import errors
    if not isinstance(obj, dict):
        return KernbinError("a build worker failed without saying why")
    name = obj.get("type")
    cls = getattr(errors, name, None) if isinstance(name, str) and name in errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, KernbinError)):
        cls = KernbinError
    args = [a for a in obj.get("args") or [] if isinstance(a, str)] if isinstance(obj.get("args"), list) else []
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    attrs = obj.get("attrs") if isinstance(obj.get("attrs"), dict) else {}
    for k, v in attrs.items():
        # only data attributes: nothing that shadows a method or Exception's own (args, add_note, ...)
        if isinstance(k, str) and k.isidentifier() and not k.startswith("_") and _plain(v) and \
                not callable(getattr(cls, k, None)) and not hasattr(BaseException, k):
            if k in ("log", "options", "reason", "rule", "code_name", "call", "backend") and \
                    not (v is None or isinstance(v, str)):
                continue                    # text attributes stay text (str() of the error reads them)
            setattr(e, k, v)
    return e


# -- verification ----------------------------------------------------------------------------------

def expected_key(job: BuildJob) -> str:
    """The cache key this job's result must belong to, computed on this machine: the target's
    toolchain and device fingerprint here (the target must open here), the IR digest, the options."""
    from .backends import get_backend
    from .cache.key import cache_key
    from .target import parse_target
    t = parse_target(job.target)
    device = get_backend(t.backend).open(t)
    return cache_key(job.ir.sha256, device.toolchain, device.id.fingerprint, job.options)


def verify_result(data, job: BuildJob, key: str | None = None) -> NativeBinary:
    """The verified :class:`NativeBinary` a worker sent for ``job``.

    Raises :class:`InvalidBinary`: any defect of the ``.knb`` (``NativeBinary.from_bytes``, every
    digest; its ``rule``), or ``rule="build-mismatch"`` when its build info is not what was asked
    (another IR, target or options) or, with ``key``, belongs to another cache key (another toolchain
    or device than this machine's). The job's IR is attached when the bytes carry none."""
    native = NativeBinary.from_bytes(data)
    info = native.info
    for what, got, want in (("IR", info.ir_sha256, job.ir.sha256), ("target", info.target, job.target),
                            ("options", info.options.key(), job.options.key())):
        if got != want:
            raise InvalidBinary(f"a worker sent a binary built with another {what} than asked for {job.target} "
                                f"({got[:60]!r} != {want[:60]!r})", rule="build-mismatch", build_info=info)
    if key is not None:
        from .cache.key import key_for_info
        if key_for_info(info) != key:
            raise InvalidBinary(f"a worker sent a binary for {job.target} built by another toolchain or device "
                                f"than this machine's ({info.toolchain.key()[:80]!r}, device "
                                f"{info.device_fingerprint[:16]})", rule="build-mismatch", build_info=info)
    return native if native.ir is not None else replace(native, ir=job.ir)


def run_jobs(executor: Executor, work: Callable, jobs: Sequence[BuildJob],
             on_done: Callable[[int], None] | None = None) -> list[tuple[NativeBinary, bool]]:
    """Run every job on ``executor`` and verify every answer; ``[(NativeBinary, cache_hit)]`` in job
    order. When any job failed (or sent bytes that fail verification), all of them have still run to
    their end; the first failure in job order is raised."""
    def ident(job):
        return job.target, job.ir.sha256, job.options.key()
    keys = {}
    if executor.remote:                  # before anything is sent: a target this machine cannot check fails now
        for job in jobs:
            if ident(job) not in keys:
                keys[ident(job)] = expected_key(job)
    answers = executor.run(work, jobs, on_done)
    out, first = [], None
    for job, ans in zip(jobs, answers):
        if isinstance(ans, tuple):
            try:
                out.append((verify_result(ans[0], job, keys.get(ident(job))), ans[1]))
                continue
            except InvalidBinary as e:
                ans = e
        if first is None:
            first = ans
            if hasattr(first, "add_note"):           # Python 3.11+: say which build it was
                first.add_note(f"kernbin: while building IR {job.ir.sha256[:12]} for {job.target}")
        out.append(None)
    if first is not None:
        raise first
    return out


# -- the executors ---------------------------------------------------------------------------------

class ProcessExecutor:
    """Local worker processes (spawned), ``jobs`` at most (default: one per core); a single job, or
    ``jobs=1``, runs in this process."""
    name = "process"
    remote = False

    def __init__(self, jobs: int | None = None):
        self.jobs = jobs

    def run(self, work, jobs, on_done=None) -> list:
        n = max(1, min(self.jobs or os.cpu_count() or 1, len(jobs)))
        answers: list = [None] * len(jobs)
        if n == 1:
            for i, job in enumerate(jobs):
                answers[i] = _answer(_call(work, *job.args))
                if on_done:
                    on_done(i)
            return answers
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_call, work, *job.args): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    answers[i] = _answer(fut.result())
                except Exception as e:      # noqa: BLE001 - a worker killed (segfault, OOM): BrokenProcessPool
                    answers[i] = KernbinError(f"the worker process building {jobs[i].target} failed: "
                                              f"{type(e).__name__}: {e}")
                if on_done:
                    on_done(i)
        return answers


_RAY_POLL = 5.0          # seconds between checks while waiting on Ray tasks
_RAY_TIMEOUT = 1800.0    # seconds without any build finishing before the rest are cancelled


class RayExecutor:
    """Every job a Ray task (one CPU each) on the cluster at ``address`` (``"host:port"``,
    ``"ray://host:port"``, ``"auto"``); without one, ``ray.init()``'s own choice (``RAY_ADDRESS``, the
    latest cluster started on this machine, else a new local one). A process already connected to
    Ray keeps its connection. Workers need kernbin and the target's toolchain, the same as this
    machine's: every answer is checked against the cache key computed here. When no build finishes
    for ``timeout`` seconds (``KERNBIN_RAY_TIMEOUT``, default 1800) the rest are cancelled and fail;
    a cluster without a CPU is refused at once."""
    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, timeout: float | None = None):
        self.address = address
        if timeout is None:
            try:
                timeout = float(os.environ.get("KERNBIN_RAY_TIMEOUT", "") or _RAY_TIMEOUT)
            except ValueError:
                timeout = _RAY_TIMEOUT
        self.timeout = timeout if timeout > 0 else _RAY_TIMEOUT

    def _ray(self):
        try:
            import ray
        except ImportError as e:
            raise RuntimeNotFound("the ray executor needs Ray: pip install 'kernbin[ray]' "
                                  f"(import ray failed: {e})") from None
        if not ray.is_initialized():
            import logging
            _reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING,
                         configure_logging=True)
            except Exception as e:      # noqa: BLE001 - ConnectionError, RuntimeError, ValueError from Ray
                where = self.address or "the default address"
                raise KernbinError(f"cannot connect to the Ray cluster at {where}: {e}") from e
        return ray

    def run(self, work, jobs, on_done=None) -> list:
        ray = self._ray()
        from ray.exceptions import RayError
        if ray.cluster_resources().get("CPU", 0) < 1:       # a task needing a CPU would wait forever
            raise KernbinError("the Ray cluster has no CPU to run builds on (ray.cluster_resources())")
        task = ray.remote(num_cpus=1, max_retries=1)(_call)
        irs: dict = {}
        refs = []
        for job in jobs:
            if job.ir.sha256 not in irs:         # each IR crosses once, whatever the number of targets
                irs[job.ir.sha256] = ray.put(job.ir.data)
            _, kind, target, options, use_cache = job.args
            refs.append(task.remote(work, irs[job.ir.sha256], kind, target, options, use_cache))
        index = {ref: i for i, ref in enumerate(refs)}
        answers: list = [None] * len(jobs)
        pending = list(refs)
        idle_since = time.monotonic()
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=_RAY_POLL)
            if not done:
                if time.monotonic() - idle_since > self.timeout:      # nothing finished for that long
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    for ref in pending:
                        answers[index[ref]] = KernbinError(
                            f"the Ray task building {jobs[index[ref]].target} did not finish: no build "
                            f"finished for {self.timeout:g} s (KERNBIN_RAY_TIMEOUT); cancelled")
                    pending = []
                continue
            idle_since = time.monotonic()
            for ref in done:
                i = index[ref]
                try:
                    answers[i] = _answer(ray.get(ref))
                except RayError as e:            # the worker died, or raised something not a KernbinError
                    answers[i] = KernbinError(f"the Ray task building {jobs[i].target} failed: "
                                              f"{type(e).__name__}: {str(e).strip()[-2000:]}")
                if on_done:
                    on_done(i)
        return answers


def _reachable(address: str | None, timeout: float = 10.0) -> None:
    """A KernbinError now when ``host:port`` (or ``ray://host:port``) does not accept a connection:
    ``ray.init`` would retry for minutes. Other spellings (``auto``, none) are left to Ray."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    import socket
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise KernbinError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}") from None


def get_executor(spec: "str | Executor | None" = None, *, jobs: int | None = None) -> Executor:
    """The executor named by ``spec``: None or ``"process"`` (local processes, ``jobs`` at most),
    ``"ray"`` or ``"ray=ADDRESS"``; an :class:`Executor` object is returned as it is. Anything else
    is an :class:`OptionsError` (``field="executor"``)."""
    if spec is None or spec == "process":
        return ProcessExecutor(jobs)
    if not isinstance(spec, str):
        if callable(getattr(spec, "run", None)) and hasattr(spec, "remote"):
            return spec
        raise OptionsError("executor", f"an executor is 'process', 'ray' or 'ray=ADDRESS', not {type(spec).__name__}")
    name, eq, address = spec.partition("=")
    if name.strip().lower() == "ray":
        address = address.strip()
        if eq and not address:
            raise OptionsError("executor", "'ray=' needs an address, e.g. ray=127.0.0.1:6379 (or plain 'ray')")
        return RayExecutor(address or None)
    raise OptionsError("executor", f"unknown executor {spec[:80]!r}: use 'process', 'ray' or 'ray=ADDRESS'")
