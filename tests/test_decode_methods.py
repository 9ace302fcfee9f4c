"""Online decode methods: lossless ones reproduce plain decoding exactly, bounded caches stay bounded."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import tiny_models
from helpers import run_cli
from tokeff.core.errors import TokeffError
from tokeff.core.models import load_model
from tokeff.decoding import get_method
from tokeff.decoding.budget import DraftBudget
from tokeff.decoding.h2o import HeavyHitterLayer, eager_attention
from tokeff.decoding.lookup import NgramIndex
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.sampling import TokenChooser
from tokeff.core.rope import shift_keys
from tokeff.decoding.sink import SinkCache
from tokeff.decoding.tree_attention import forward_tree
from tokeff.decoding.types import DecodeConfig, DecodeStats, Prompt
from tokeff.decoding.verify import DraftTree, accept_by_ratio

PROMPT = "def fib(n):\n    return fib(n - 1) + fib(n - 2)\n\ndef add(a, b):\n    return a + b\n\ndef fib(n):\n"


def _perturbed(lm):
    """The model with noise on its MLPs: a same-tokenizer draft that mostly, not always, agrees with it."""
    draft = load_model(str(lm.folder), device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in draft.model.get_decoder().layers:
            weight = layer.mlp.down_proj.weight
            weight.add_(torch.randn_like(weight) * weight.std() * 0.3)
    return draft


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_gemma_dir):
    """Each tiny family with a same-tokenizer draft and the other family as a cross-tokenizer draft."""
    llama = load_model(str(tiny_llama_dir), device="cpu")
    gemma = load_model(str(tiny_gemma_dir), device="cpu")
    return {"llama": (llama, _perturbed(llama), gemma), "gemma": (gemma, _perturbed(gemma), llama)}


def _variants(same, other):
    return {
        "lookup": ("lookup", {}),
        "lookup-fixed": ("lookup", {"draft_tokens": 4, "ngram": 2}),
        "recycle": ("recycle", {}),
        "recycle-fixed": ("recycle", {"tree_size": 12}),
        "speculative-same": ("speculative", {"draft": same}),
        "speculative-cross": ("speculative", {"draft": other, "draft_tokens": 4}),
    }


VARIANTS = ["lookup", "lookup-fixed", "recycle", "recycle-fixed", "speculative-same", "speculative-cross"]


def _run(lm, method, options, prompt, **config):
    return get_method(method)(lm, DecodeConfig(stop_at_eos=False, **config), **options).generate(prompt)


@pytest.mark.parametrize("family", ["llama", "gemma"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_output_is_identical_to_greedy(models, family, variant):
    lm, same, other = models[family]
    method, options = _variants(same, other)[variant]
    prompt = Prompt.from_text(lm, PROMPT)  # longer than Gemma's 16-token sliding window: rollback crosses it
    expected = _run(lm, "greedy", {}, prompt, max_new_tokens=40).token_ids
    streamed = []
    result = get_method(method)(lm, DecodeConfig(max_new_tokens=40, stop_at_eos=False), **options).generate(
        prompt, on_text=streamed.append
    )
    assert result.token_ids == expected
    assert "".join(streamed) == result.text
    stats = result.to_json()
    assert stats["tokens"] == 40 and stats["forward_passes"] <= 40 and stats["peak_kv_bytes"] > 0
    assert stats["accepted_per_pass"] == pytest.approx(40 / stats["forward_passes"])
    if variant.endswith("fixed") or variant == "speculative-same":
        assert stats["draft_acceptance"] > 0  # the comparison covered accepted drafts
    if variant == "recycle-fixed":
        assert stats["draft_acceptance"] < 1  # and rejected branches pruned from the cache
    if method == "speculative":
        assert stats["draft_path"] == ("same tokenizer" if variant == "speculative-same" else "re-tokenized through text")


@pytest.mark.parametrize("variant", ["lookup-fixed", "recycle-fixed", "speculative-cross"])
def test_seeded_sampling_is_identical_to_sample(models, variant):
    """Fixed guesses are verified by the chooser's own draws, one per emitted token, in order: with a seed the
    output is token for token the one of --method sample, so its distribution is the model's."""
    lm, same, other = models["llama"]
    method, options = _variants(same, other)[variant]
    prompt = Prompt.from_text(lm, PROMPT)
    accepted = 0
    for seed in range(3):
        config = dict(max_new_tokens=30, temperature=0.7, top_k=3, seed=seed)
        expected = _run(lm, "sample", {}, prompt, **config).token_ids
        result = _run(lm, method, options, prompt, **config)
        assert result.token_ids == expected
        accepted += result.details["draft_acceptance"] > 0
    assert accepted  # the comparison covered accepted drafts


def _exact_joint(lm, prompt_ids, chooser, length):
    """P(first `length` tokens) by brute force over the warped distributions."""
    joint = {(): 1.0}
    for _ in range(length):
        grown = {}
        for prefix, mass in joint.items():
            with torch.no_grad():
                logits = lm.model(torch.tensor([prompt_ids + list(prefix)])).logits[0, -1]
            probs = chooser.distribution(logits)
            for token in probs.nonzero().flatten().tolist():
                grown[prefix + (token,)] = mass * float(probs[token])
        joint = grown
    return joint


@pytest.mark.parametrize("variant", ["speculative-same", "recycle-fixed", "lookup-fixed"])
def test_sampled_distribution_matches_the_model(models, variant):
    """Chi-square test of the joint distribution of the first three tokens against brute force (top-k 2: 8 cells);
    the same-tokenizer draft exercises the speculative-sampling rule (drafts sampled from q)."""
    lm, same, other = models["llama"]
    method, options = _variants(same, other)[variant]
    prompt = Prompt.from_text(lm, "the the the the the")
    config = DecodeConfig(max_new_tokens=3, temperature=1.0, top_k=2, stop_at_eos=False)
    exact = _exact_joint(lm, prompt.ids, TokenChooser(config), 3)
    decoder = get_method(method)(lm, config, **options)
    samples, accepted = 400, 0
    counts = dict.fromkeys(exact, 0)
    for seed in range(samples):
        decoder.config.seed = seed
        result = decoder.generate(prompt)
        counts[tuple(result.token_ids)] += 1
        accepted += result.details["draft_acceptance"] > 0
    assert accepted > samples // 10
    statistic = sum((counts[cell] - samples * p) ** 2 / (samples * p) for cell, p in exact.items())
    assert statistic < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def test_speculative_sampling_rule_follows_the_target():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    chooser = TokenChooser(DecodeConfig(temperature=1.0, seed=0))
    logits = torch.log(p).expand(2, 4)
    first = []
    for _ in range(8000):
        draft = chooser.sample(q)
        first.append(accept_by_ratio([draft], q[None], logits, chooser).tokens[0])
    frequencies = torch.bincount(torch.tensor(first), minlength=4) / len(first)
    assert torch.allclose(frequencies, p, atol=0.025)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_tree_attention_matches_each_path_alone(models, family):
    lm = models[family][0]
    context = lm.encode(PROMPT)[:30]  # past Gemma's 16-token sliding window
    tree = DraftTree([11, 12, 13, 14, 15, 16, 17, 18], [-1, 0, 0, 1, 1, 3, 2, 6])
    runner = CachedRunner(lm, DecodeStats(), rollback=True)
    runner.forward(context[:-1])
    runner.crop(runner.length)
    tree.tokens[0] = context[-1]
    logits = forward_tree(runner, tree)

    def path(node):
        return [] if node < 0 else path(tree.parents[node]) + [tree.tokens[node]]

    with torch.no_grad():
        for node in range(len(tree)):
            alone = lm.model(torch.tensor([context[:-1] + path(node)])).logits[0, -1]
            assert torch.allclose(logits[node], alone, atol=1e-4)
        # Keeping one path leaves the cache as if only that path had been fed.
        runner.keep_new(len(tree), [0, 1, 3, 5])
        assert runner.length == len(context) + 3
        after = runner.forward([42])[-1]
        alone = lm.model(torch.tensor([context[:-1] + path(5) + [42]])).logits[0, -1]
        assert torch.allclose(after, alone, atol=1e-4)


def test_ngram_index_finds_the_latest_longest_match():
    index = NgramIndex(3)
    index.extend([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3])
    assert index.continuation(3) == ([7, 5, 2], 2)  # (2, 3) last continued with 7; the 3-gram (5, 2, 3) never occurred
    index.extend([4])
    assert index.continuation(5) == ([], 0)
    index.extend([1, 2])
    assert index.continuation(2) == ([3, 7], 2)  # latest (1, 2) was followed by 3, then 7


def test_budget_sizes_trees_by_measured_cost():
    candidates = DraftTree(list(range(9)), [-1, 0, 1, 2, 3, 4, 5, 6, 7])
    depth = list(range(9))
    slots = [max(d - 1, 0) for d in depth]
    sizes = {}
    for name, slope in [("cpu-like", 1.0), ("gpu-like", 0.001)]:
        budget = DraftBudget([0.8] * 8)
        for n in (1, 9):
            budget.cost.observe(n, 1.0 + slope * n)
        sizes[name] = len(budget.select(candidates, slots, depth, limit=8).tree) - 1
    assert sizes["cpu-like"] < sizes["gpu-like"] == 8
    # Counterfactual counts: a node never verified still learns from the tokens the target chose.
    budget = DraftBudget([0.5] * 8)
    budget.observe(candidates, slots, depth, emitted=[1, 2, 99], fed=2, seconds=1.0)
    assert budget.rates.trials[:3].tolist() == [1, 1, 1] and budget.rates.hits[:3].tolist() == [1, 1, 0]


def test_option_validation(models):
    lm = models["llama"][0]
    with pytest.raises(TokeffError, match="--tree-size does not apply to --method lookup"):
        get_method("lookup")(lm, DecodeConfig(), tree_size=4)
    with pytest.raises(TokeffError, match="needs --draft"):
        get_method("speculative")(lm, DecodeConfig())
    with pytest.raises(TokeffError, match=r"--tree-size must be an integer in \[1, 96\], got 0"):
        get_method("recycle")(lm, DecodeConfig(), tree_size=0)  # the wording of the spec's bounds
    with pytest.raises(TokeffError, match="--kv-budget must be an integer >= 2, got 1"):
        get_method("h2o")(lm, DecodeConfig(), kv_budget=1)
    with pytest.raises(TokeffError, match="--window must be less than --kv-budget 8, got 8"):
        get_method("h2o")(lm, DecodeConfig(), kv_budget=8, window=8)
    with pytest.raises(TokeffError, match="--draft-tokens must be an integer in \\[1, 16\\], got 17"):
        get_method("speculative")(lm, DecodeConfig(), draft=lm, draft_tokens=17)
    with pytest.raises(TokeffError, match="--embedding must be one of mean, last, got 'first'"):
        get_method("dynamic")(lm, DecodeConfig(), embedding="first")
    with pytest.raises(TokeffError, match=r"must be in 2\.\.512 \(the model's positions\), got 804"):
        get_method("sink")(lm, DecodeConfig(), window=400)


def test_rotating_keys_moves_them_to_another_position(models):
    lm = models["gemma"][0]
    rotary = lm.model.get_decoder().rotary_emb
    keys = torch.randn(1, 1, 3, 16)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def at(position):
        cos, sin = rotary(keys, torch.tensor([[position] * 3]), "full_attention")
        return apply_rotary_pos_emb(keys, keys, cos, sin)[1]

    layer = lm.text_config.layer_types.index("full_attention")
    assert torch.allclose(shift_keys(at(40), lm.rotary.inv_freq(layer), -33), at(7), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_sink_cache_is_exact_until_it_evicts_and_rotates_kept_keys(models, family):
    lm = models[family][0]
    ids = lm.encode(PROMPT * 3)[:40]
    sink, full = SinkCache(lm, sinks=2, window=60), DynamicCache(config=lm.model.config)
    with torch.no_grad():
        a = lm.model(torch.tensor([ids]), past_key_values=sink).logits
        b = lm.model(torch.tensor([ids]), past_key_values=full).logits
        assert torch.allclose(a, b, atol=1e-5)
        small = SinkCache(lm, sinks=2, window=10)
        for token in ids:
            lm.model(torch.tensor([[token]]), past_key_values=small)
        # Layer 0's keys depend only on token and position: after eviction they must be those of the kept
        # tokens at positions 0..11, as if only they had been fed.
        kept = ids[:2] + ids[-10:]
        fresh = DynamicCache()
        lm.model(torch.tensor([kept]), past_key_values=fresh)
    assert small.get_seq_length() == 12
    assert torch.allclose(small.layers[0].keys, fresh.layers[0].keys, atol=1e-5)


def test_sink_streams_past_the_model_context(models, tmp_path):
    """The tiny models have 512 positions; a 1,500-token stream through sinks keeps positions below 2 + 64 + 16."""
    lm = models["llama"][0]
    text = (tiny_models.SHARED_DATA / "tinyshakespeare.txt").read_text()[:6000]
    positions = []
    hook = lm.model.get_decoder().rotary_emb.register_forward_hook(
        lambda module, args, kwargs, output: positions.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        from tokeff.decoding.bounded import bounded_cache_bpb

        method = get_method("sink")(lm, DecodeConfig(), sinks=2, window=64)
        result = bounded_cache_bpb(method, text, context=2000, chunk=16).to_json()
    finally:
        hook.remove()
    streamed = [int(ids.max()) for ids in positions if ids.shape[-1] <= 16]  # the full-cache passes are longer
    assert result["tokens"] > 1500 and len(streamed) > 90 and max(streamed) < 2 + 64 + 16
    assert math.isfinite(result["bpb"]) and result["kv_bytes"] < result["full_cache_kv_bytes"]
    assert result["full_cache_context"] == 512


def test_heavy_hitter_layer_keeps_recent_and_most_attended():
    layer = HeavyHitterLayer(budget=6, recent=2)
    keys = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 2, 10, 1).contiguous()
    layer.update(keys, keys.clone())
    attention = torch.zeros(1, 4, 1, 10)  # 4 query heads over 2 KV heads
    attention[0, :2, 0, [1, 4, 6, 7, 0]] = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    attention[0, 2:, 0, [2, 3, 5, 7, 0]] = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    layer.observe(attention)
    assert layer.positions[0, 0].tolist() == [1, 4, 6, 7, 8, 9]
    assert layer.positions[0, 1].tolist() == [2, 3, 5, 7, 8, 9]
    assert layer.keys[0, 1, :, 0].tolist() == [2, 3, 5, 7, 8, 9]
    assert layer.get_seq_length() == 10 and layer.get_mask_sizes(1) == (7, 4)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_h2o_within_budget_equals_full_cache_and_restores_attention(models, family):
    lm = models[family][0]
    prompt = Prompt.from_text(lm, PROMPT)
    expected = _run(lm, "greedy", {}, prompt, max_new_tokens=20).token_ids
    roomy = _run(lm, "h2o", {"kv_budget": 200}, prompt, max_new_tokens=20)
    assert roomy.token_ids == expected
    tight = _run(lm, "h2o", {"kv_budget": 16, "window": 4}, prompt, max_new_tokens=20)
    assert tight.stats.peak_kv_bytes < roomy.stats.peak_kv_bytes
    assert lm.model.config._attn_implementation == "sdpa"
    with eager_attention(lm.model):
        assert lm.model.config._attn_implementation == "eager"
    assert lm.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["llama", "gemma"])
@pytest.mark.parametrize("method, options", [("sink", {"sinks": 4, "window": 200}), ("h2o", {"kv_budget": 200})])
def test_bounded_caches_that_evict_nothing_equal_plain_scoring(models, family, method, options):
    """Decode-order scoring slides the same windows as plain scoring: a cache that evicts nothing gives its numbers."""
    from tokeff.core.evaluation import bits_per_byte
    from tokeff.decoding.bounded import bounded_cache_bpb

    lm = models[family][0]
    text = (tiny_models.SHARED_DATA / "tinyshakespeare.txt").read_text()[:1500]
    result = bounded_cache_bpb(get_method(method)(lm, DecodeConfig(), **options), text, 64, stride=24, chunk=5).to_json()
    plain = bits_per_byte(lm, text, context=64, stride=24)
    assert result["tokens"] > 10 * 64 and result["stride"] == result["full_cache_stride"] == 24
    assert result["scoring"] == "windows in decode order" and result["chunk"] == 5
    assert result["bpb"] == pytest.approx(plain.bpb, abs=1e-4) and result["full_cache_bpb"] == plain.bpb


def test_h2o_scores_through_its_cache(models):
    from tokeff.decoding.bounded import bounded_cache_bpb

    lm = models["gemma"][0]
    result = bounded_cache_bpb(get_method("h2o")(lm, DecodeConfig(), kv_budget=16), PROMPT * 4, context=200, chunk=4).to_json()
    assert result["kv_bytes"] < result["full_cache_kv_bytes"] and math.isfinite(result["bpb"])
    assert lm.model.config._attn_implementation == "sdpa"


def test_cli_decode_methods_and_flags(tiny_llama_dir, tiny_gemma_dir):
    base = ["decode", "-m", tiny_llama_dir, "--prompt", PROMPT, "--max-new-tokens", 12, "--ignore-eos", "--json"]
    payload = json.loads(run_cli(*base, "--method", "recycle", "-o", "tree-size=8", check=0).stdout)
    assert payload["method"] == "recycle" and payload["tokens"] == 12 and payload["tree_size"] == 8
    assert {"seconds", "tokens_per_s", "forward_passes", "accepted_per_pass", "peak_kv_bytes"} <= set(payload)
    payload = json.loads(run_cli(*base, "--method", "speculative", "--draft", tiny_gemma_dir, check=0).stdout)
    assert payload["tokens"] == 12 and payload["draft_path"] == "re-tokenized through text"
    error = run_cli(*base, "--method", "lookup", "--kv-budget", 8, check=1).stderr
    assert error == "tokeff: error: --kv-budget does not apply to --method lookup\n"


def test_cli_eval_bpb_through_a_bounded_cache(tiny_gemma_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("All the world's a stage, and all the men and women merely players.\n" * 6)
    args = ["eval", "bpb", "-m", tiny_gemma_dir, text, "--context", 200, "--json"]
    payload = json.loads(run_cli(*args, "--method", "sink", "--window", 24, "--sinks", 2, "--chunk", 4, check=0).stdout)
    assert payload["method"] == "sink" and payload["window"] == 24 and payload["kv_bytes"] < payload["full_cache_kv_bytes"]
    assert payload["bpb_increase"] == pytest.approx(payload["bpb"] - payload["full_cache_bpb"])
    assert "does not bound the cache" in run_cli(*args, "--method", "lookup", check=1).stderr
    assert "--window applies only with --method" in run_cli(*args, "--window", 8, check=1).stderr


@pytest.mark.slow
def test_real_models_lossless_greedy(builtin_model):
    smollm = builtin_model("smollm2-135m")
    prompt = Prompt.from_text(smollm, 'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same backwards."""\n')
    expected = _run(smollm, "greedy", {}, prompt, max_new_tokens=48).token_ids
    for method in ("lookup", "recycle"):
        result = _run(smollm, method, {}, prompt, max_new_tokens=48)
        assert result.token_ids == expected, method
    gemma = builtin_model("gemma3-270m")  # sliding-window layers and a 262k vocabulary
    prompt = Prompt.from_text(gemma, "The capital of France is Paris. The capital of Germany is")
    expected = _run(gemma, "greedy", {}, prompt, max_new_tokens=24).token_ids
    result = _run(gemma, "speculative", {"draft": smollm}, prompt, max_new_tokens=24)
    assert result.token_ids == expected and result.details["draft_path"] == "re-tokenized through text"
    assert result.details["draft_acceptance"] > 0
    for method in ("lookup", "recycle"):
        assert _run(gemma, method, {}, prompt, max_new_tokens=24).token_ids == expected, method


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [("sink", {"sinks": 4, "window": 252}), ("h2o", {"kv_budget": 256})])
def test_real_model_bounded_cache_keeps_perplexity_close(builtin_model, method, options):
    from tokeff.decoding.bounded import bounded_cache_bpb

    lm = builtin_model("smollm2-135m")
    text = Path(tiny_models.SHARED_DATA / "wikitext2-valid.txt").read_text()[:6000]
    result = bounded_cache_bpb(get_method(method)(lm, DecodeConfig(), **options), text, context=2048, chunk=32).to_json()
    assert result["tokens"] > 1000 and -0.01 < result["bpb_increase"] < 0.1
    assert result["kv_bytes"] * 4 < result["full_cache_kv_bytes"]
    assert lm.model.config._attn_implementation == "sdpa"  # h2o's eager attention was undone
