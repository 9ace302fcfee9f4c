import pytest
import torch

from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.decoding import get_method, method_names
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig, Prompt


@pytest.fixture
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def _no_cache_greedy(lm, ids, steps):
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(lm.model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids


def test_registry_lists_baselines_and_rejects_unknown():
    assert {"greedy", "sample"} <= set(method_names())
    with pytest.raises(TokeffError, match="unknown decode method"):
        get_method("telepathy")


def test_greedy_equals_argmax_without_cache(lm):
    prompt = Prompt.from_text(lm, "To be, or not")
    config = DecodeConfig(max_new_tokens=20, stop_at_eos=False)
    streamed = []
    result = get_method("greedy")(lm, config).generate(prompt, on_text=streamed.append)
    expected = _no_cache_greedy(lm, prompt.ids, 20)[len(prompt.ids):]
    assert result.token_ids == expected
    assert "".join(streamed) == result.text == lm.tokenizer.decode(expected, skip_special_tokens=True)
    stats = result.to_json()
    assert stats["tokens"] == 20 and stats["forward_passes"] == 20 and stats["accepted_per_pass"] == 1.0
    assert stats["peak_kv_bytes"] > 0 and stats["tokens_per_s"] > 0
    # prefill and decode apart: the phases add up, and decoding made 19 of the 20 tokens
    assert stats["prefill_seconds"] + stats["decode_seconds"] == pytest.approx(stats["seconds"])
    assert stats["decode_tokens_per_s"] == pytest.approx(19 / stats["decode_seconds"])
    assert stats["prefill_tokens_per_s"] == pytest.approx(len(prompt.ids) / stats["prefill_seconds"])


def test_greedy_equals_transformers_generate(lm):
    prompt = Prompt.from_text(lm, "whether 'tis nobler")
    ours = get_method("greedy")(lm, DecodeConfig(max_new_tokens=24, stop_at_eos=False)).generate(prompt)
    with torch.no_grad():
        theirs = lm.model.generate(
            torch.tensor([prompt.ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False
        )[0, len(prompt.ids):]
    assert ours.token_ids == theirs.tolist()


def test_sampling_is_reproducible_with_a_seed(lm):
    prompt = Prompt.from_text(lm, "Hello")
    config = DecodeConfig(max_new_tokens=16, temperature=1.0, seed=7, stop_at_eos=False)
    first = get_method("sample")(lm, config).generate(prompt).token_ids
    assert get_method("sample")(lm, config).generate(prompt).token_ids == first
    other = DecodeConfig(max_new_tokens=16, temperature=1.0, seed=8, stop_at_eos=False)
    assert get_method("sample")(lm, other).generate(prompt).token_ids != first


def test_generation_stops_at_eos(lm):
    eos = lm.tokenizer.eos_token_id

    def favour_eos(module, inputs, logits):
        logits[..., eos] += 1000.0  # make EOS overwhelmingly likely
        return logits

    lm.model.get_output_embeddings().register_forward_hook(favour_eos)
    result = get_method("greedy")(lm, DecodeConfig(max_new_tokens=10)).generate(Prompt.from_text(lm, "Hi"))
    assert result.token_ids == [eos]


def test_method_and_option_validation(lm):
    with pytest.raises(TokeffError, match="does not sample"):
        get_method("greedy")(lm, DecodeConfig(temperature=0.5))
    with pytest.raises(TokeffError, match="needs --temperature"):
        get_method("sample")(lm, DecodeConfig(temperature=0.0))
    with pytest.raises(TokeffError, match="--kv-budget does not apply"):
        get_method("greedy")(lm, DecodeConfig(), kv_budget=4)


def test_chooser_distribution_matches_warped_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
    probs = TokenChooser(DecodeConfig(temperature=0.5, top_k=3, seed=0)).distribution(logits)
    expected = torch.softmax(torch.where(logits >= 1.0, logits / 0.5, torch.tensor(-torch.inf)), -1)
    assert torch.allclose(probs, expected) and probs.sum().item() == pytest.approx(1.0)
    nucleus = TokenChooser(DecodeConfig(temperature=1.0, top_p=0.7, seed=0)).distribution(logits)
    assert (nucleus > 0).sum() == 2  # 3.0 alone has mass 0.62 < 0.7, so 2.0 joins it
    greedy = TokenChooser(DecodeConfig()).distribution(logits)
    assert greedy.tolist() == [0, 0, 0, 0, 1]


def test_sampled_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    chooser = TokenChooser(DecodeConfig(temperature=1.0, seed=0))
    counts = torch.bincount(torch.tensor([chooser.choose(logits, []) for _ in range(4000)]), minlength=3) / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_chooser_rejects_bad_settings():
    for config, flag in [(DecodeConfig(temperature=-1), "temperature"), (DecodeConfig(temperature=1, top_p=0), "top-p"),
                         (DecodeConfig(temperature=1, top_k=0), "top-k")]:
        with pytest.raises(TokeffError, match=flag):
            TokenChooser(config)
