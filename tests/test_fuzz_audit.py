"""The fuzzer itself (issue #20): its mutators draw only what a Hypothesis ``Random`` can give, and
the bundle target gets past the digests (structure-aware edits re-sealed), into entry decoding,
selection and the gate."""
import importlib.util
import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kernbin_tools_fuzz_audit", os.path.join(ROOT, "tools", "fuzz.py"))
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=False))
def test_tree_mutations_of_long_strings_and_lists_draw_from_a_hypothesis_random(rng):
    """``rng.sample(text, len(text))`` of a long string asked Hypothesis for a list of that many
    distinct indices: past its buffer it failed its own assertion (test_hypothesis_mutations
    [xpu-output] failed at random). Permutations now move a bounded window, index by index."""
    for _ in range(30):
        fuzz.mutate_tree(rng, {"s": "x" * 9000 + "y"}, ["a"], fuzz._Raw(fuzz._JSON_RAW))
        fuzz.mutate_tree(rng, {"l": list(range(9000))}, ["a"], fuzz._Raw(fuzz._JSON_RAW))
    text = list("abcdefghijklmnopqrstuvwxyz" * 400)
    fuzz._shuffle_some(rng, text)
    assert sorted(text) == sorted("abcdefghijklmnopqrstuvwxyz" * 400)


def test_shuffle_some_moves_only_a_window():
    seq = list(range(1000))
    fuzz._shuffle_some(random.Random(3), seq)
    moved = [i for i, v in enumerate(seq) if v != i]
    assert sorted(seq) == list(range(1000)) and moved and max(moved) - min(moved) < fuzz._SHUFFLE_MAX


# -- the bundle target: deeper ---------------------------------------------------------------------

def _bundle_setup(tmp_path):
    raw = fuzz.collect_seeds(log=lambda m: None, samples=("vadd",))
    seeds = fuzz.prepare_seeds(raw, ("kbin",))
    if not seeds:
        import pytest
        pytest.skip("no bundle seed: no runtime built one")
    pool = fuzz.prepare_seeds(raw, fuzz.KINDS)
    seeds, ctx = fuzz.TARGETS["bundle"].setup(seeds, str(tmp_path))
    return seeds, ctx, pool


def test_bundle_inputs_get_past_the_digests_and_through_the_gate(tmp_path):
    """Most mutations used to die at the first digest (0.4% accepted): re-sealed structure-aware
    edits (manifest, entries, requirements, blobs, shape) must take at least 10% of the inputs past
    every digest, some through the gate on the stand-in devices, none to an unexpected exception."""
    import signal
    seeds, ctx, pool = _bundle_setup(tmp_path)
    target = fuzz.TARGETS["bundle"]
    rng = random.Random(20)
    n, reached, outcomes = 400, {"past_digests": 0, "gated": 0}, {}
    old = signal.signal(signal.SIGALRM, fuzz._on_alarm)
    try:
        for _ in range(n):
            seed = rng.choice(seeds)
            fuzz.REACHED.clear()
            outcome, sig, detail = fuzz.run_one(target, fuzz.mutate(rng, seed, pool), seed, ctx)
            assert outcome != fuzz.OTHER, f"{sig}\n{detail}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            for m in reached:
                reached[m] += m in fuzz.REACHED
    finally:
        signal.signal(signal.SIGALRM, old)
    assert reached["past_digests"] >= 0.1 * n and reached["gated"] > 0 and outcomes.get(fuzz.ACCEPTED, 0) > 0


def test_a_cuda_fat_requirement_of_mixed_types_is_a_kernbin_error(tmp_path):
    """Found by the deeper bundle target: members whose "sm" is a string next to ones whose "sm" is
    a number made CudaDevice.payload's sort raise TypeError; the members simply do not match."""
    import dataclasses

    import pytest

    import kernbin
    from kernbin.backends.cuda import CudaDevice
    from kernbin.device import Requirements
    seeds, ctx, _ = _bundle_setup(tmp_path)
    cuda = [d for d in ctx["devices"] if isinstance(d, CudaDevice)]
    with kernbin.open_bundle(seeds[0].data) as b:
        fat = [e for n in b.names for e in b.entries(n) if e.info.requires.kind == "cuda-fat"]
        if not fat or not cuda:
            pytest.skip("no cuda-fat entry in the seed bundle (nvJitLink missing)")
        nb = b.native(fat[0], with_ir=False)
    members = [{"code": "cubin", "sm": "90"}, {"code": "cubin", "sm": 80}, {"code": None, "sm": 80}]
    bad = dataclasses.replace(nb, info=dataclasses.replace(nb.info, requires=Requirements("cuda-fat",
                                                                                             {"members": members})))
    with pytest.raises(kernbin.InvalidBinary) as e:
        cuda[0].payload(bad, None)
    assert e.value.rule == "device-binary"
