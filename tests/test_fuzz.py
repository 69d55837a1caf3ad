"""Every parser kernbin has, fuzzed (issue "Hardening", item 3): mutated REAL files (the samples, and
binaries built at startup) only ever parse or raise a KernbinError -- never another exception, never
a run over 2 s. The mutators are those of ``tools/fuzz.py`` (which runs the same targets for as long
as one likes, in a watchdog process); here each target gets a fixed, seeded batch plus a Hypothesis
property, so that the whole file stays well under a minute. Regression tests for what the fuzzer
found are at the end."""

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernbin.errors import KernbinError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kernbin_tools_fuzz", os.path.join(ROOT, "tools", "fuzz.py"))
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

fuzz.MAX_INPUT = 256 << 10      # CI: inputs up to 256 KiB (the long runs go to 4 MiB)

# inputs per target in the seeded batch (the slow parsers -- pyelftools, YAML -- get fewer)
BATCH = {"zebin": 120, "inspect": 300, "opencl-elf": 150, "ptx": 400, "cache-entry": 600}
DEFAULT_BATCH = 1000


@pytest.fixture(scope="module")
def raw_seeds():
    """The seeds, built once: samples plus one build per target (a missing runtime just leaves
    that target without seeds: its tests skip, saying so)."""
    notes = []
    seeds = fuzz.collect_seeds(log=notes.append, samples=("vadd",))
    seeds["_notes"] = notes
    return seeds


@pytest.fixture
def alarm():
    """SIGALRM raises fuzz.Timeout while a test runs (run_one's 2 s watchdog)."""
    old = signal.signal(signal.SIGALRM, fuzz._on_alarm)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


_SETUPS = {}


def _setup(name, raw, tmp_path):
    """(target, seeds, ctx, pool), analysed once per target (the cache store: once per test)."""
    target = fuzz.TARGETS[name]
    if "pool" not in _SETUPS:
        _SETUPS["pool"] = fuzz.prepare_seeds(raw, fuzz.KINDS)
    if name not in _SETUPS:
        _SETUPS[name] = fuzz.prepare_seeds(raw, target.kinds)
    seeds = _SETUPS[name]
    if not seeds:
        pytest.skip(f"no seeds for {name}: " + ("; ".join(raw["_notes"]) or "runtime missing"))
    ctx = None
    if target.setup is not None:
        seeds, ctx = target.setup(seeds, str(tmp_path))
    return target, seeds, ctx, _SETUPS["pool"]


def _check(target, data, seed, ctx):
    outcome, sig, detail = fuzz.run_one(target, data, seed, ctx)
    assert outcome in (fuzz.ACCEPTED, fuzz.REJECTED), \
        f"{target.name}: {sig} on a {len(data)}-byte input {data[:64]!r}...\n{detail}"
    return outcome


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_seeds_are_accepted(name, raw_seeds, tmp_path, alarm):
    """The unmutated real files all parse (else the fuzzer would only explore error paths)."""
    target, seeds, ctx, _ = _setup(name, raw_seeds, tmp_path)
    for s in seeds:
        if name == "inspect" and s.kind in ("cubin", "fatbin"):
            continue                          # `kernbin inspect` does not describe bare NVIDIA binaries
        assert fuzz.run_one(target, s.data, s, ctx)[0] == fuzz.ACCEPTED, s.name


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_mutated_inputs_parse_or_raise_kernbin_error(name, raw_seeds, tmp_path, alarm):
    target, seeds, ctx, pool = _setup(name, raw_seeds, tmp_path)
    rng = random.Random(zlib.crc32(name.encode()))
    seen = {fuzz.ACCEPTED: 0, fuzz.REJECTED: 0}
    for _ in range(BATCH.get(name, DEFAULT_BATCH)):
        seed = rng.choice(seeds)
        seen[_check(target, fuzz.mutate(rng, seed, pool), seed, ctx)] += 1
    assert seen[fuzz.REJECTED] > 0                # the mutators do break things...
    if name not in ("cache-entry",):
        assert seen[fuzz.ACCEPTED] > 0            # ...and do not only break them


@pytest.mark.parametrize("name", ["knb", "container", "spirv", "ptx", "ar", "cubin", "fatbin", "inspect", "lease",
                                  "triton-meta", "xpu-output"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hypothesis_mutations(name, raw_seeds, tmp_path, alarm, data):
    """Hypothesis drives the same mutators (its Random), plus short arbitrary byte strings."""
    target, seeds, ctx, pool = _setup(name, raw_seeds, tmp_path)
    rng = data.draw(st.randoms(use_true_random=False))
    seed = rng.choice(seeds)
    _check(target, fuzz.mutate(rng, seed, pool), seed, ctx)
    if target.setup is None:
        _check(target, data.draw(st.binary(max_size=256)), seed, ctx)


# -- the tool itself ------------------------------------------------------------------------------
def test_repack_is_exactly_pack(raw_seeds):
    """The .knb re-packer (correct digests) writes what kernbin.container.pack writes."""
    from kernbin.artifact import KNB_MAGIC, KNB_VERSION
    from kernbin.container import pack
    for s in fuzz.prepare_seeds(raw_seeds, ("knb",))[:4]:
        info = s.info
        assert random.Random(1).random() >= 0.1          # so _dump_json keeps ensure_ascii=False, as pack
        again = fuzz._repack(random.Random(1), s, info["doc"]["meta"], info["sections"])
        assert again == pack(KNB_MAGIC, KNB_VERSION, info["doc"]["meta"], info["sections"], align=info["align"]) \
            == s.data


def test_watchdog_classifies_crash_hang_memory_and_foreign_exceptions(tmp_path, monkeypatch):
    """A worker that segfaults, hangs in C code, runs out of memory or raises a non-kernbin error:
    each input is "other" and saved; a KernbinError is "rejected"."""
    monkeypatch.setattr(fuzz, "TIME_LIMIT", 0.5)
    monkeypatch.setattr(fuzz, "HANG_GRACE", 0.5)

    def run(data, seed, ctx):
        k = zlib.crc32(data) % 5
        if k == 0:
            __import__("hashlib").pbkdf2_hmac("sha256", b"x", b"y", 10 ** 9)    # C code: no signal runs
        if k == 1:
            __import__("ctypes").string_at(0)                                    # SIGSEGV
        if k == 2:
            bytearray(3 << 30)                                                   # over the 1 GiB limit
        if k == 3:
            raise ValueError("not a KernbinError")
        raise KernbinError("fine")
    monkeypatch.setitem(fuzz.TARGETS, "selftest", fuzz.Target("selftest", ("ptx",), run, "self test"))
    raw = {"ptx": [(f"p{i}", bytes([i]) * 64) for i in range(40)]}
    out = tmp_path / "out"
    s = fuzz.fuzz("selftest", 5, 1, str(out), raw, progress=False)
    kinds = " ".join(s["other_kinds"])
    assert s["inputs"] == s["accepted"] + s["rejected"] + s["other"] > 0
    assert s["rejected"] > 0 and s["other"] > 0
    for what in ("crash (exit code -11)", "hang", "memory: MemoryError", "ValueError"):
        assert what in kinds, (what, s)
    saved = os.listdir(out)
    assert any(n.startswith("crash") for n in saved) and any(n.startswith("hang") for n in saved)


def test_command_line(tmp_path):
    """--list names every target; a short run prints the JSON summary as its last line."""
    py = sys.executable
    tool = os.path.join(ROOT, "tools", "fuzz.py")
    listed = subprocess.run([py, tool, "--list"], capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in listed.splitlines()] == list(fuzz.TARGETS)
    p = subprocess.run([py, tool, "spirv", "--seconds", "1.5", "--seed", "3", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["target"] == "spirv" and last["inputs"] > 100
    assert last["inputs"] == last["accepted"] + last["rejected"] + last["other"]
    assert last["other"] == 0, last


# -- regressions: what the fuzzer found ------------------------------------------------------------
def _first(raw, kind):
    seeds = fuzz.prepare_seeds(raw, (kind,))
    if not seeds:
        pytest.skip(f"no {kind} seed: " + ("; ".join(raw["_notes"]) or "runtime missing"))
    return seeds[0]


def _rejected_fast(fn, data, rule, limit=1.0):
    import time
    from kernbin.errors import InvalidBinary
    t0 = time.perf_counter()
    with pytest.raises(InvalidBinary) as e:
        fn(data)
    assert e.value.rule == rule, e.value
    assert time.perf_counter() - t0 < limit


def _inflate(elf: bytes, n: int, *, run: int = 0, consecutive: bool = False) -> bytes:
    """``elf`` with a section table of ``n`` copies of its section 1 at the end; with ``run``, its
    section-name table moved onto a run of ``run`` bytes without a NUL."""
    import struct
    d = bytearray(elf)
    shoff, = struct.unpack_from("<Q", d, 40)
    shnum, shstrndx = struct.unpack_from("<HH", d, 60)
    table = [bytearray(d[shoff + i * 64:shoff + i * 64 + 64]) for i in range(shnum)]
    for i in range(n - shnum):
        e = bytearray(table[1])
        if consecutive:
            struct.pack_into("<I", e, 0, i)
        table.append(e)
    if run:
        struct.pack_into("<QQ", table[shstrndx], 24, len(d), run)
        d += b"A" * run
    d += bytes(-len(d) % 8)
    struct.pack_into("<Q", d, 40, len(d))
    struct.pack_into("<H", d, 60, n)
    return bytes(d + b"".join(table))


def test_zebin_yaml_alias_bomb_is_rejected_at_once(raw_seeds):
    """Spotted in the code, then reached by the fuzzer's .ze_info mutator (3 of 3000 mutations time
    out on the old parser): a .ze_info of 4 KB whose version (or any integer field, through the
    repr() in its error message) is an alias to nested aliases -- a YAML "billion laughs" -- made
    parse_zebin build a 722 MB string (8 s; one level more: out of memory), on every load of such
    a zebin. Aliases are now refused (IGC never writes them)."""
    import random
    from kernbin.formats.zebin import parse_zebin
    z = _first(raw_seeds, "zebin")
    hdr, off, size, _ = z.info["ze_info"]
    text = z.info["ze_text"].decode()
    bomb = "".join(f"_b{i}: &b{i} [{', '.join(['lol'] * 10 if i == 0 else [f'*b{i - 1}'] * 10)}]\n"
                   for i in range(10))
    version = re_sub_first(r"(?m)^version:.*$", "version: *b7", text)
    for ze in ("---\n" + bomb + version.replace("---\n", "", 1), text.replace("name:", "name: &n", 1) + "x: *n\n"):
        data = fuzz._put_section(z.data, hdr, off, size, ze.encode(), random.Random(0))
        _rejected_fast(parse_zebin, data, "ze-info-yaml")
    parse_zebin(z.data)                          # the real one still parses


def re_sub_first(pattern, repl, text):
    import re
    out, n = re.subn(pattern, repl, text, count=1)
    assert n == 1
    return out


def test_cubin_kernel_names_are_linear(raw_seeds):
    """Spotted in the code, then reached by the fuzzer's section-table inflation (inputs of 3-4 MB
    took 3-5 s): 60000 section headers whose names all start in one 1 MB run without a NUL made
    cubin_kernels scan and copy 60 GB (quadratic). Kernel names are now read once per offset and
    must fit in the string table."""
    from kernbin.formats.cubin import cubin_kernels
    c = _first(raw_seeds, "cubin")
    names = cubin_kernels(c.data)
    assert names
    import time
    for data in (_inflate(c.data, 60000, run=1 << 20), _inflate(c.data, 30000, run=1 << 16, consecutive=True)):
        t0 = time.perf_counter()
        try:
            assert cubin_kernels(data) == ()
        except KernbinError:
            pass
        assert time.perf_counter() - t0 < 1.0
    data = bytearray(_inflate(c.data, 3000))   # many headers naming one .text.<kernel> string: fine
    assert cubin_kernels(bytes(data))[:len(names)] == names


@pytest.mark.parametrize("kind", ["zebin", "ocl"])
def test_elf_tables_are_bounded_before_pyelftools(raw_seeds, kind):
    """Found by the fuzzer (zebin with the fix off: 70 inputs over 2 s in 4 minutes, all in
    pyelftools' name reading and section walks; opencl-elf alike): pyelftools reads each section
    name up to the next NUL in the whole file, 64 bytes per call, on every pass over the sections
    -- 1000 headers named into a 64 KB run took minutes, 65535 plain headers ~2 s. The tables are
    bounded before pyelftools runs."""
    from kernbin.formats.opencl_elf import describe
    from kernbin.formats.zebin import MAX_SECTIONS, parse_zebin
    fn = parse_zebin if kind == "zebin" else describe
    s = _first(raw_seeds, kind)
    fn(s.data)
    _rejected_fast(fn, _inflate(s.data, 1000, run=1 << 16, consecutive=True), "elf-tables")
    _rejected_fast(fn, _inflate(s.data, 200, run=1 << 20), "elf-tables")
    _rejected_fast(fn, _inflate(s.data, MAX_SECTIONS + 1), "elf-tables")
    import struct
    d = bytearray(s.data)                      # an extended section count (e_shnum 0) of 2^40
    shoff, = struct.unpack_from("<Q", d, 40)
    struct.pack_into("<H", d, 60, 0)
    struct.pack_into("<Q", d, shoff + 32, 1 << 40)
    _rejected_fast(fn, bytes(d), "elf-tables")
    fn(_inflate(s.data, 2000))                 # many sections, sane names: still parses


def test_knb_with_deeply_nested_extra_read_twice(raw_seeds):
    """A .knb whose build info has ``extra`` nested 600 deep (found by the fuzzer): the second read
    of the same header (a cache hit takes the memoised, frozen path) raised RecursionError. Now
    both reads refuse it the same way (``build-info``: nested deeper than 32 levels)."""
    from dataclasses import replace
    from kernbin.artifact import NativeBinary
    nb = NativeBinary.from_bytes(_first(raw_seeds, "knb").data)
    deep = leaf = {}
    for _ in range(600):
        leaf["a"] = {}
        leaf = leaf["a"]
    data = replace(nb, info=replace(nb.info, extra={"x": deep})).to_bytes()
    for _ in range(2):               # the build info is built when asked for (a native load does not)
        with pytest.raises(KernbinError) as e:
            NativeBinary.from_bytes(data).info
        assert e.value.rule == "build-info"
        with pytest.raises(KernbinError) as e:
            NativeBinary.from_bytes(data).verify()
        assert e.value.rule == "build-info"


def test_zebin_yaml_is_read_by_libyaml_with_bounded_nesting(raw_seeds):
    """Found by the fuzzer (zebin, 10 minutes: 2 inputs over 2 s): the pure-Python YAML scanner is
    quadratic in flow nesting ("[" * 3000 took 1.7 s) and slow on big .ze_info (~480 KB for 300
    kernels: 2.9 s). libyaml's loader (when PyYAML has it) bounds nesting and is 5-10x faster."""
    import random
    import time

    import yaml
    from kernbin.formats.zebin import _ze_info_loader, parse_zebin
    z = _first(raw_seeds, "zebin")
    hdr, off, size, _ = z.info["ze_info"]
    deep = z.info["ze_text"] + b"x: " + b"[" * 3000 + b"]" * 3000 + b"\n"
    data = fuzz._put_section(z.data, hdr, off, size, deep, random.Random(0))
    t0 = time.perf_counter()
    with pytest.raises(KernbinError):
        parse_zebin(data)
    assert time.perf_counter() - t0 < 2.0
    if getattr(yaml, "__with_libyaml__", False):
        assert issubclass(_ze_info_loader(), yaml.CSafeLoader)


def test_elf_symbol_tables_are_bounded_in_all(raw_seeds):
    """The bound on symbols holds for all symbol tables together: 4000 section headers each
    naming the same 32000-symbol table must not cost 4000 x 32000 steps."""
    import struct
    import time
    from kernbin.errors import InvalidBinary
    from kernbin.formats.zebin import check_elf_tables
    s = _first(raw_seeds, "zebin")
    d = bytearray(s.data)
    at = len(d)
    d += bytes(32000 * 24)
    shoff, = struct.unpack_from("<Q", d, 40)
    shstrndx, = struct.unpack_from("<H", d, 62)
    h = shoff + 64                                     # section 1 becomes a symbol table of empty names
    struct.pack_into("<II", d, h, 0, 2)
    struct.pack_into("<QQI", d, h + 24, at, 32000 * 24, shstrndx)
    struct.pack_into("<Q", d, h + 56, 24)
    check_elf_tables(bytes(d), "test", symbols=True)   # one such table is fine
    t0 = time.perf_counter()
    with pytest.raises(InvalidBinary) as e:
        check_elf_tables(_inflate(bytes(d), 4000), "test", symbols=True)
    assert e.value.rule == "elf-tables" and time.perf_counter() - t0 < 1.0
