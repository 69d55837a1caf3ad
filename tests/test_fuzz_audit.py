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
