"""Exact byte-level probabilities: brute force over tokenizations, next-byte distributions, decoding, ensembles."""

import codecs
import math

import pytest
import torch
from bytelevel_brute_force import BruteForce, CanonicalOnly

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel, load_model
from tokeff.decoding import get_method, method_names
from tokeff.core.scoring import prefix_token_id
from tokeff.decoding.bytelevel import ByteEnsemble, ByteLevelModel, byte_bits_per_byte, generate_by_tokens
from tokeff.decoding.bytelevel.scoring import segments
from tokeff.decoding.bytelevel.utf8 import allowed_next
from tokeff.decoding.bytelevel.vocab import END, ByteVocab
from tokeff.decoding.sampling import TokenChooser
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.kernels.byte_scatter import scatter_logsumexp, scatter_logsumexp_numba, scatter_logsumexp_reference


@pytest.fixture
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def _scored(lm, text: bytes, **kwargs) -> ByteLevelModel:
    model = ByteLevelModel(lm, **kwargs)
    model.append(text)
    return model


def test_scatter_kernels_agree():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator, dtype=torch.float64) * 20
    values[::7] = -math.inf
    bins = torch.randint(0, 250, (5000,), generator=generator)  # bins 250-257 stay empty
    expected = scatter_logsumexp_reference(values, bins, 258)
    naive = torch.tensor([torch.logsumexp(values[bins == b], 0) if (bins == b).any() else -math.inf for b in range(258)])
    torch.testing.assert_close(expected, naive.double())
    torch.testing.assert_close(scatter_logsumexp_numba(values.float(), bins, 258), scatter_logsumexp_reference(values.float(), bins, 258))
    assert torch.isneginf(scatter_logsumexp(values, bins, 258)[250:]).all()


@pytest.mark.parametrize("text", [b"to be, or not", b"ret", b"x\n\n\n  if"])
def test_byte_probability_is_the_sum_over_covers(lm, text):
    """The covering rule on the raw model: covers whose first tokens are the tokenizer's tokenization of what they spell.

    "to be, or not" is longer than the pre-tokenizer lookahead, so the trunk moves past hard boundaries;
    whitespace runs before a word are where a regex pre-tokenizer's lookahead matters.
    """
    model = _scored(lm, text)
    assert model.start > 0 or len(text) < 9
    assert model.prefix_logprob() == pytest.approx(BruteForce(lm, canonical_prefixes=True).cover_logprob(text), abs=1e-5)


def test_byte_probability_is_the_sum_over_all_tokenizations_when_the_model_is_canonical(lm):
    """The lemma itself: with no probability on non-canonical tokenizations, the sum over *all* tokenizations."""
    canonical = LoadedModel(model=CanonicalOnly(lm), tokenizer=lm.tokenizer, spec="canonical", folder=lm.folder)
    text = b"the k"
    model = _scored(canonical, text)
    assert model.prefix_logprob() == pytest.approx(BruteForce(canonical, canonical_prefixes=False).cover_logprob(text), abs=1e-5)
    # No mass leaks under such a model, so the chain rule over next-byte distributions gives the same number.
    chained, fresh = 0.0, ByteLevelModel(canonical)
    for byte in text:
        chained += float(fresh.next_byte_logprobs()[byte])
        fresh.append(byte)
    assert chained == pytest.approx(model.prefix_logprob(), abs=1e-5)


@pytest.mark.parametrize("text", [b"And so", "caf\u00e9".encode()])
def test_next_byte_distribution_sums_to_one_and_matches_brute_force(lm, text):
    model = _scored(lm, text)
    logprobs = model.next_byte_logprobs()
    assert logprobs.shape == (257,) and float(logprobs.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    expected = BruteForce(lm, canonical_prefixes=True).next_byte_logprobs(text, allowed_next(text)[:257])
    assert torch.equal(torch.isfinite(logprobs), torch.isfinite(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(logprobs[finite], expected[finite], atol=2e-5, rtol=0)


def test_long_context_past_the_sliding_window(tiny_gemma_dir):
    """Gemma's sliding-window layers (16 positions in the tiny model) with a context longer than the window."""
    lm = load_model(str(tiny_gemma_dir), device="cpu")
    context = lm.encode("Now is the winter of our discontent made glorious summer by this sun of York")
    assert len(context) > 20
    model = _scored(lm, b" and", context_ids=context)
    brute = BruteForce(lm, canonical_prefixes=True, context=context)
    assert model.prefix_logprob() == pytest.approx(brute.cover_logprob(b" and"), abs=1e-5)
    expected = brute.next_byte_logprobs(b" and", allowed_next(b" and")[:257])
    finite = torch.isfinite(expected)
    torch.testing.assert_close(model.next_byte_logprobs()[finite], expected[finite], atol=2e-5, rtol=0)


def test_multibyte_characters_generate_and_normalize(lm):
    model = ByteLevelModel(lm, text="na\u00efve caf")
    model.append("\u00e9 \U0001f600".encode()[:5])  # stop two bytes into the emoji
    logprobs = model.next_byte_logprobs()
    assert float(logprobs.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    allowed = torch.isfinite(logprobs)
    assert not allowed[END] and not allowed[:0x80].any()  # only continuation bytes may follow a lead byte


def test_vocab_ranges_and_hard_boundaries(lm):
    vocab = ByteVocab.for_model(lm)
    for prefix in [b"t", b"th", b"\xff", b""]:
        ids = vocab.extending(prefix).tolist()
        assert sorted(ids) == sorted(i for i, data in enumerate(vocab.token_bytes) if data and data.startswith(prefix))
    # A byte pair inside some token is never a hard boundary; one in no token always is.
    assert not vocab.is_hard_boundary(ord("t"), ord("h"))
    assert all(
        not any(bytes([a, b]) in data for data in vocab.sorted_bytes)
        for a in range(0x61, 0x7B)
        for b in range(0x61, 0x7B)
        if vocab.is_hard_boundary(a, b)
    )


def test_registry_has_byte_and_heal():
    assert {"byte", "heal", "greedy"} <= set(method_names())


@pytest.mark.parametrize("byte_greedy", [False, True])
def test_byte_method_streams_what_it_returns(lm, byte_greedy):
    streamed = []
    config = DecodeConfig(max_new_tokens=12, stop_at_eos=False)
    method = get_method("byte")(lm, config, byte_greedy=byte_greedy)
    result = method.generate(Prompt.from_text(lm, "To be, or no"), on_text=streamed.append)
    assert len(result.token_ids) == 12 and bytes(result.token_ids).decode("utf-8", "replace") == result.text
    assert "".join(streamed) == result.text
    assert result.details["steps"] == ("bytes" if byte_greedy else "tokens")
    if byte_greedy:  # greedy over bytes: each byte is the argmax of the byte-level distribution after the previous ones
        model = ByteLevelModel(lm, text="To be, or no")
        for byte in result.token_ids:
            assert int(model.next_byte_logprobs()[:END].argmax()) == byte
            model.append(byte)
    else:  # whole tokens: fewer model calls than bytes
        assert result.stats.forward_passes < 12


def _uncached_logits(lm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([ids]), use_cache=False).logits[0, -1].double()


@pytest.mark.parametrize("text", [b"And so", b"x\n\n  i", "caf\u00e9".encode()])
def test_covers_are_the_brute_force_next_tokens(lm, text):
    """The token-speed method's first choice: every cover of the text past its end and every token after a
    full tokenization, with their joint probabilities, against brute force over tokenizations."""
    model = ByteLevelModel(lm, text=text)
    covers = model.next_covers()
    assert float(covers.logprobs.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    ours = {}
    for index in torch.nonzero(torch.isfinite(covers.logprobs)).flatten().tolist():
        path, token, _ = covers.entry(index)
        ours[path + (token,)] = float(covers.logprobs[index])
    brute = BruteForce(lm, canonical_prefixes=True).next_tokens(text)
    valid = allowed_next(text)
    vocab = ByteVocab.for_model(lm)
    spelled = {path: b"".join(vocab.token_bytes[t] or b"" for t in path) for path in brute}
    brute = {path: logp for path, logp in brute.items()
             if valid[spelled[path][len(text)] if len(spelled[path]) > len(text) else END]}
    total = math.log(sum(math.exp(logp) for logp in brute.values()))
    assert set(ours) == set(brute)
    for path, logp in brute.items():
        assert ours[path] == pytest.approx(logp - total, abs=1e-5)
    # Their next bytes sum to the byte-level distribution.
    scattered = scatter_logsumexp(covers.logprobs, covers.bins, 258)[: END + 1]
    torch.testing.assert_close(scattered, model.next_byte_logprobs())


def _valid_utf8_prefix(data: bytes) -> bool:
    """Valid UTF-8, possibly ending inside a character (the standard library's incremental decoder)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data)
        return True
    except UnicodeDecodeError:
        return False


def test_token_speed_greedy_is_the_best_cover_then_argmax_tokens(lm):
    """Greedy over tokens, against an uncached oracle: the most probable brute-force cover, then the argmax
    token after each prefix among those that keep the text UTF-8 (special tokens and the end excluded, as
    with --ignore-eos)."""
    text, budget = b"To be, or no", 14
    result = get_method("byte")(lm, DecodeConfig(max_new_tokens=budget, stop_at_eos=False)).generate(Prompt.from_text(lm, text.decode()))
    vocab = ByteVocab.for_model(lm)
    entries = BruteForce(lm, canonical_prefixes=True).next_tokens(text)
    entries = {path: logp for path, logp in entries.items() if path[-1] not in vocab.eos_ids}
    tokens = list(max(entries, key=entries.get))
    context = [prefix_token_id(lm)]
    expected = b"".join(vocab.token_bytes[t] for t in tokens)[len(text):]
    while len(expected) < budget:
        logits = _uncached_logits(lm, context + tokens)
        banned = [i for i, data in enumerate(vocab.token_bytes) if not data or not _valid_utf8_prefix(expected + data)]
        logits[banned] = -math.inf
        tokens.append(int(logits.argmax()))
        expected += vocab.token_bytes[tokens[-1]]
    assert bytes(result.token_ids) == expected[:budget]
    assert result.stats.forward_passes < budget


def test_token_speed_sampling_is_the_byte_level_distribution(tiny_llama_dir):
    """Exactness of a cover then whole tokens, on a model with no mass on non-canonical tokenizations: the
    probability of the first two bytes it generates (a cover, then the token after it when the cover adds
    one byte) equals the byte-level model's, byte after byte."""
    base = load_model(str(tiny_llama_dir), device="cpu")
    lm = LoadedModel(model=CanonicalOnly(base), tokenizer=base.tokenizer, spec="canonical", folder=base.folder)
    text = b"the k"
    vocab = ByteVocab.for_model(lm)
    covers = ByteLevelModel(lm, text=text).next_covers()
    context = [prefix_token_id(lm)]
    two = torch.full((256, 257), -math.inf, dtype=torch.float64)  # log P(first byte, second byte or END)
    for index in torch.nonzero(torch.isfinite(covers.logprobs)).flatten().tolist():
        path, token, inside = covers.entry(index)
        if token in vocab.eos_ids:
            continue
        new, logp = vocab.token_bytes[token][inside:], float(covers.logprobs[index])
        if len(new) > 1:
            two[new[0], new[1]] = torch.logaddexp(two[new[0], new[1]], torch.tensor(logp, dtype=torch.float64))
            continue
        after = torch.log_softmax(_uncached_logits(lm, context + list(path) + [token]), -1)
        bins = vocab.first_bin.clone()
        seconds = scatter_logsumexp(after, bins, 258)[: END + 1]
        two[new[0]] = torch.logaddexp(two[new[0]], seconds + logp)
    byte_level = ByteLevelModel(lm, text=text).next_byte_logprobs()
    firsts = torch.topk(byte_level[:END], 3).indices.tolist()
    for first in firsts:
        expected = byte_level[first] + ByteLevelModel(lm, text=text + bytes([first])).next_byte_logprobs()
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(two[first]))
        torch.testing.assert_close(two[first][finite], expected[finite], atol=1e-5, rtol=0)


def test_token_speed_stops_inside_a_token(lm):
    """A stop string or the byte budget cuts the last token: the output is the uncut run up to there."""
    model = lambda: ByteLevelModel(lm, text="To be, or no")  # noqa: E731
    chooser = lambda: TokenChooser(DecodeConfig())  # noqa: E731
    full = generate_by_tokens(model(), chooser(), 40, stop_at_end=False)
    assert len(full) == 40
    for budget in (1, 7):
        assert generate_by_tokens(model(), chooser(), budget, stop_at_end=False) == full[:budget]
    marker = full[5:7]
    streamed = []
    stopped = generate_by_tokens(model(), chooser(), 40, False, stop=(marker,), on_text=streamed.append)
    assert stopped == full[: full.index(marker) + len(marker)] and "".join(streamed) == stopped.decode("utf-8", "replace")


def test_sampled_byte_decoding_is_reproducible(lm):
    config = DecodeConfig(max_new_tokens=10, temperature=1.0, seed=3, stop_at_eos=False)
    first = get_method("byte")(lm, config).generate(Prompt.from_text(lm, "Thou")).token_ids
    assert get_method("byte")(lm, config).generate(Prompt.from_text(lm, "Thou")).token_ids == first


def test_token_healing_backs_up_one_token(lm):
    prompt = Prompt.from_text(lm, "def fib(n):\n    ret")
    vocab = ByteVocab.for_model(lm)
    last = prompt.ids[-1]
    result = get_method("heal")(lm, DecodeConfig(max_new_tokens=6, stop_at_eos=False)).generate(prompt)
    first = result.token_ids[0]
    assert vocab.token_bytes[first].startswith(vocab.token_bytes[last])
    with torch.no_grad():  # the constrained argmax, recomputed without a cache
        logits = lm.model(torch.tensor([prompt.ids[:-1]])).logits[0, -1]
    allowed = vocab.extending(vocab.token_bytes[last])
    assert first == int(allowed[logits[allowed].argmax()])
    full = lm.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert full == lm.tokenizer.decode([last]) + result.text  # the backed-up text is not repeated


def test_ensemble_modes(tiny_llama_dir, tiny_gemma_dir):
    llama = load_model(str(tiny_llama_dir), device="cpu")
    gemma = load_model(str(tiny_gemma_dir), device="cpu")
    single = ByteLevelModel(llama, text="To be")
    alone = single.next_byte_logprobs()
    for mode in ("mix", "product"):  # a model ensembled with itself is itself
        twin = ByteEnsemble([ByteLevelModel(llama, text="To be"), ByteLevelModel(llama, text="To be")], [1, 3], mode)
        torch.testing.assert_close(twin.next_byte_logprobs(), alone)
    members = [ByteLevelModel(llama, text="To be"), ByteLevelModel(gemma, text="To be")]
    mixed = ByteEnsemble(members, [1, 1], "mix").next_byte_logprobs()
    expected = torch.logsumexp(torch.stack([m.next_byte_logprobs() for m in members]) + math.log(0.5), 0)
    torch.testing.assert_close(mixed, expected - torch.logsumexp(expected, 0))
    product = ByteEnsemble(members, [1, 1], "product").next_byte_logprobs()
    assert float(product.exp().sum()) == pytest.approx(1.0)
    with pytest.raises(TokeffError, match="one --weight per --model"):
        ByteEnsemble(members, [1.0])
    with pytest.raises(TokeffError, match="--mode must be"):
        ByteEnsemble(members, mode="sum")


def test_byte_bits_per_byte(tiny_llama_dir, tiny_gemma_dir):
    llama = load_model(str(tiny_llama_dir), device="cpu")
    gemma = load_model(str(tiny_gemma_dir), device="cpu")
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler"
    result = byte_bits_per_byte([llama, gemma], text, mode="mix", segment_bytes=40)
    assert result.bytes == len(text.encode()) and result.segments == 2
    assert result.bpb <= sum(result.member_bpb) / 2  # Jensen: a mixture never loses to its members on average
    solo = byte_bits_per_byte([llama], text, segment_bytes=40)
    assert solo.bpb == pytest.approx(solo.member_bpb[0]) == pytest.approx(result.member_bpb[0])


def test_segments_cut_after_newlines_and_between_characters():
    data = ("ab\n" * 10 + "\u00e9" * 20).encode()
    pieces = segments(data, 16)
    assert b"".join(pieces) == data and all(len(piece) <= 16 for piece in pieces)
    assert pieces[0].endswith(b"\n")
    for piece in pieces:
        piece.decode("utf-8")
