"""tokeff transplant on the tiny models; one slow test on the real built-in pair."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny_models import untied_copy

from tokeff.core.errors import TokeffError
from tokeff.kernels.anchors import nearest_anchors
from tokeff.kernels.omp import omp, omp_candidates
from tokeff.surgery.transplant.pipeline import TransplantOptions, transplant
from tokeff.surgery.transplant.scale import MIN_GAIN
from tokeff.surgery.transplant.subword import decompose
from tokeff.surgery.transplant.vocab import match_vocabularies
from tokeff.tokenizers_tools.canonical import vocab_bytes


def _brute_force_omp(target: torch.Tensor, dictionary: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
    """Textbook OMP: pick the atom most correlated (unit atoms) with the residual, refit by lstsq."""
    unit = dictionary / dictionary.norm(dim=1, keepdim=True)
    picked: list[int] = []
    residual = target.double()
    for _ in range(k):
        scores = (unit.double() @ residual).abs()
        scores[picked] = -1
        picked.append(int(scores.argmax()))
        atoms = dictionary[picked].double().T
        coefficients = torch.linalg.lstsq(atoms, target.double().unsqueeze(1)).solution.squeeze(1)
        residual = target.double() - atoms @ coefficients
    return picked, coefficients


def test_omp_matches_brute_force():
    torch.manual_seed(0)
    dictionary, targets = torch.randn(120, 24), torch.randn(10, 24)
    candidates = torch.stack([torch.randperm(120)[:40] for _ in targets])
    codes = {
        "shared": (omp(targets, dictionary, 6), lambda row: dictionary),
        "per target": (omp(targets, dictionary[candidates], 6), lambda row: dictionary[candidates[row]]),
        "numba": (omp_candidates(targets, dictionary, candidates, 6), lambda row: dictionary[candidates[row]]),
    }
    for name, ((picked, coefficients), atoms_of) in codes.items():
        for row in range(len(targets)):
            expected_ids, expected = _brute_force_omp(targets[row], atoms_of(row), 6)
            assert picked[row].tolist() == expected_ids, name
            torch.testing.assert_close(coefficients[row].double(), expected, atol=1e-4, rtol=1e-4)


def test_omp_recovers_sparse_code():
    torch.manual_seed(1)
    dictionary = torch.randn(200, 64)
    target = 2.0 * dictionary[3] - 0.5 * dictionary[77] + 1.5 * dictionary[150]
    picked, coefficients = omp_candidates(target.unsqueeze(0), dictionary, torch.arange(200).unsqueeze(0), 3)
    code = dict(zip(picked[0].tolist(), coefficients[0].tolist()))
    assert code.keys() == {3, 77, 150}
    assert code[3] == pytest.approx(2.0, abs=1e-3) and code[77] == pytest.approx(-0.5, abs=1e-3)


def test_nearest_anchors_are_the_top_cosines():
    torch.manual_seed(2)
    queries, anchors = torch.randn(5, 16), torch.randn(300, 16)
    cosine = torch.nn.functional.cosine_similarity(queries.unsqueeze(1), anchors.unsqueeze(0), dim=2)
    for absolute, ranked in ((False, cosine), (True, cosine.abs())):
        ids, scores = nearest_anchors(queries, anchors, 7, absolute=absolute)
        assert ids.tolist() == ranked.topk(7, dim=1).indices.tolist()
        torch.testing.assert_close(scores, cosine.gather(1, ids))


def test_byte_level_and_sentencepiece_share_by_canonical_bytes(byte_level_tokenizer, sentencepiece_tokenizer):
    match = match_vocabularies(byte_level_tokenizer, sentencepiece_tokenizer)
    raw_shared = set(byte_level_tokenizer.get_vocab()) & set(sentencepiece_tokenizer.get_vocab())
    assert len(match.shared_ids) > 2 * len(raw_shared)  # raw strings miss "Ġthe" == "▁the"
    base_bytes, donor_bytes = vocab_bytes(byte_level_tokenizer), vocab_bytes(sentencepiece_tokenizer)
    for donor_id in match.shared_ids:
        assert donor_bytes.token_bytes[donor_id] == base_bytes.token_bytes[match.base_row[donor_id]]
    the = sentencepiece_tokenizer.convert_tokens_to_ids("▁the")
    assert byte_level_tokenizer.convert_ids_to_tokens(int(match.base_row[the])) == "Ġthe"
    byte_a = sentencepiece_tokenizer.convert_tokens_to_ids("<0x0A>")  # byte fallback newline
    assert base_bytes.token_bytes[match.base_row[byte_a]] == b"\n"
    counts = match.counts()
    assert counts["shared"] + counts["new"] + counts["unreachable"] + sum(counts["special_matched"].values()) == counts["donor_tokens"]


@pytest.mark.parametrize("method", ["omp", "mean", "zero", "subword", "hybrid"])
def test_transplant_writes_stock_loadable_model(tmp_path, tiny_llama_dir, tiny_gemma_dir, method):
    out = tmp_path / "out"
    result = transplant(str(tiny_llama_dir), str(tiny_gemma_dir), out, TransplantOptions(method=method, method_options={"k": 8} if method in ("omp", "hybrid") else {}, pad_to=64))
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    donor = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    assert tokenizer.get_vocab() == donor.get_vocab()
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tokenizer) and model.config.vocab_size == rows
    assert model.config.eos_token_id == donor.eos_token_id and model.config.bos_token_id == donor.bos_token_id
    manifest = json.loads((out / "tokeff.json").read_text())
    assert manifest["kind"] == "model" and manifest["parameters"]["transplant"]["method"] == method
    assert manifest["metrics"]["vocabulary"]["shared"] == result["vocabulary"]["shared"] > 0
    # Shared tokens keep the base rows exactly.
    match = match_vocabularies(AutoTokenizer.from_pretrained(tiny_llama_dir), donor)
    base = load_file(str(tiny_llama_dir / "model.safetensors"))["model.embed_tokens.weight"]
    new = model.get_input_embeddings().weight.detach()
    shared = torch.from_numpy(match.shared_ids)
    torch.testing.assert_close(new[shared], base[torch.from_numpy(match.base_row[match.shared_ids])])
    estimated = new[torch.from_numpy(match.new_ids)]
    if method == "zero":
        assert estimated.abs().max() == 0
    else:
        assert estimated.abs().sum(dim=1).min() > 0
    ids = tokenizer("Hello there, my lord", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()


def test_omp_rows_apply_donor_codes_to_base_rows(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    """A new token's row is the OMP code (found in the donor space) applied to the base anchors."""
    out = tmp_path / "out"
    transplant(str(tiny_llama_dir), str(tiny_gemma_dir), out, TransplantOptions(method="omp", method_options={"k": 4}, new_scale=1.0))
    match = match_vocabularies(AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_gemma_dir))
    donor = load_file(str(tiny_gemma_dir / "model.safetensors"))["model.embed_tokens.weight"]
    base = load_file(str(tiny_llama_dir / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    shared = match.shared_ids
    token = int(match.new_ids[0])
    picked, coefficients = _brute_force_omp(donor[token], donor[torch.from_numpy(shared)], 4)
    expected = (coefficients.float().unsqueeze(1) * base[torch.from_numpy(match.base_row[shared[picked]])]).sum(0)
    torch.testing.assert_close(new[token], expected, atol=1e-4, rtol=1e-3)


def test_omp_widen_recodes_poor_fits_over_all_anchors():
    """widen_below=1 recodes every target over all anchors: the brute-force OMP codes; without it,
    4k candidates give other codes for some targets."""
    from tokeff.surgery.transplant.estimators.omp import omp_codes

    torch.manual_seed(0)
    vectors, targets = torch.randn(300, 16), torch.randn(6, 16)
    narrow = omp_codes(targets, vectors, 3, 12, torch.device("cpu"))
    wide = omp_codes(targets, vectors, 3, 12, torch.device("cpu"), widen_below=1.0)
    for row in range(len(targets)):
        picked, coefficients = _brute_force_omp(targets[row], vectors, 3)
        assert wide[0][row].tolist() == picked
        torch.testing.assert_close(wide[1][row], coefficients.float(), atol=1e-4, rtol=1e-4)
    assert not torch.equal(narrow[0], wide[0])


def test_omp_subword_prior_is_spelling_plus_code_of_the_rest(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    """prior=subword: a new token's row is w * (mean base row of its pieces) + OMP code of what that
    spelling leaves of its donor embedding, w the least-squares weight of the pieces' donor mean."""
    out = tmp_path / "out"
    options = TransplantOptions(method="omp", method_options={"k": 4, "prior": "subword"}, new_scale=1.0)
    transplant(str(tiny_llama_dir), str(tiny_gemma_dir), out, options)
    base_tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    match = match_vocabularies(base_tokenizer, AutoTokenizer.from_pretrained(tiny_gemma_dir))
    donor = load_file(str(tiny_gemma_dir / "model.safetensors"))["model.embed_tokens.weight"].double()
    base = load_file(str(tiny_llama_dir / "model.safetensors"))["model.embed_tokens.weight"].double()
    new = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"].double()
    shared = match.shared_ids
    donor_of_base = {int(match.base_row[d]): int(d) for d in shared}
    checked = 0
    for token in match.new_ids:
        data = match.donor_vocab.token_bytes[int(token)]
        pieces = decompose([data], base_tokenizer, match.base_vocab)[0]
        known = [donor_of_base[p] for p in pieces if p in donor_of_base]
        if not known or len(shared) < 16:
            continue
        prior = donor[known].mean(0)
        weight = float(donor[token] @ prior / (prior @ prior))
        residual = donor[token] - weight * prior
        picked, coefficients = _brute_force_omp(residual.float(), donor[torch.from_numpy(shared)].float(), 4)
        expected = weight * base[pieces].mean(0) + (coefficients.unsqueeze(1) * base[torch.from_numpy(match.base_row[shared[picked]])]).sum(0)
        torch.testing.assert_close(new[token], expected, atol=1e-6, rtol=1e-3)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_untied_head_rebuilt_separately(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    untied = tmp_path / "untied"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(untied)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(untied)
    out = tmp_path / "out"
    transplant(str(untied), str(tiny_gemma_dir), out, TransplantOptions(method="subword"))
    tensors = load_file(str(out / "model.safetensors"))
    assert not torch.equal(tensors["model.embed_tokens.weight"], tensors["lm_head.weight"])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(loaded.lm_head.weight, tensors["lm_head.weight"])
    assert loaded.lm_head.weight.shape == loaded.get_input_embeddings().weight.shape


def test_special_tokens_by_role_and_map(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    base, donor = AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_gemma_dir)
    match = match_vocabularies(base, donor)
    assert match.special_matches[donor.eos_token_id] == (base.eos_token_id, "role:eos")
    assert match.special_matches[donor.bos_token_id] == (base.bos_token_id, "role:bos")
    mapped = match_vocabularies(base, donor, {"<pad>": "<|endoftext|>"})
    assert mapped.special_matches[donor.pad_token_id] == (base.convert_tokens_to_ids("<|endoftext|>"), "map")
    with pytest.raises(TokeffError, match="not a token of the donor"):
        match_vocabularies(base, donor, {"<nope>": "<|endoftext|>"})


def test_quality_report_and_cli(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    from helpers import run_cli
    from transformers import AutoConfig

    text = tmp_path / "eval.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 8)
    out = tmp_path / "out"
    result = run_cli("transplant", tiny_llama_dir, "--donor", tiny_gemma_dir, "-o", out, "--k", 4, "--eval-text", text, "--json",
                     check=0)
    payload = json.loads(result.stdout)
    quality = payload["quality"]
    assert quality["shared_bytes"] + quality["new_bytes"] == quality["bytes"] == len(text.read_bytes())
    # the base figure is what `tokeff eval bpb` reports, and the split by token kind adds up to the totals
    context = min(1024, AutoConfig.from_pretrained(tiny_llama_dir).max_position_embeddings)  # the pipeline's default
    base = json.loads(run_cli("eval", "bpb", "-m", tiny_llama_dir, text, "--context", context, "--json", check=0).stdout)
    assert quality["base_bpb"] == pytest.approx(base["bpb"], rel=1e-5)
    for model in ("base", "transplanted"):
        split = sum(quality[f"{label}_bytes"] * quality[f"{label}_{model}_bpb"] for label in ("shared", "new")
                    if quality[f"{label}_bytes"])
        assert split == pytest.approx(quality["bytes"] * quality[f"{model}_bpb"], rel=1e-4)
    assert run_cli("verify", out, check=0).stdout.strip().endswith("ok")


def test_bad_input(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    with pytest.raises(TokeffError, match="same tokenizer"):
        transplant(str(tiny_llama_dir), str(tiny_llama_dir), tmp_path / "a", TransplantOptions())
    with pytest.raises(TokeffError, match="needs the donor model"):
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "b", TransplantOptions(donor_tokenizer_only=True))
    with pytest.raises(TokeffError, match="unknown transplant method"):
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "c", TransplantOptions(method="magic"))
    with pytest.raises(TokeffError, match="--new-scale must be positive"):
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "d", TransplantOptions(new_scale=0.0))
    with pytest.raises(TokeffError, match="--new-scale must be auto or a number"):
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "d", TransplantOptions(new_scale="loud"))
    with pytest.raises(TokeffError, match="--tune-text only serves"):
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "d", TransplantOptions(new_scale=0.5, tune_text="x"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_method_options_from_specs(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    from helpers import run_cli

    args = ("transplant", tiny_llama_dir, "--donor", tiny_gemma_dir, "--new-scale", "1", "--json")
    out = tmp_path / "h"
    result = json.loads(run_cli(*args, "-o", out, "--method", "hybrid", "--k", 4, "--param", "local_weight=0.25", check=0).stdout)
    assert result["transplant"]["method_options"] == {"k": 4, "local_weight": 0.25, "temperature": 0.05}
    # a flag of another method, an out-of-bounds value, an option set twice: one-line errors, nothing written
    for extra, message in ((("--method", "subword", "--k", 4), "--k does not apply to --method subword"),
                           (("--method", "hybrid", "--param", "local_weight=2"), "must be a number in [0, 1]"),
                           (("--method", "omp", "--k", 4, "--param", "k=5"), "--k is given both as a flag and with --param")):
        failed = run_cli(*args, "-o", tmp_path / "bad", *extra, check=1)
        assert message in failed.stderr
        assert not (tmp_path / "bad").exists()


def test_k_larger_than_shared_is_clamped(tmp_path, tiny_llama_dir, tiny_gemma_dir, capsys):
    result = transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "o", TransplantOptions(method_options={"k": 100_000}))
    assert result["transplant"]["method_options"]["k"] == result["vocabulary"]["shared"]
    assert "using k=" in capsys.readouterr().err


def test_donor_tokenizer_only_folder(tmp_path, tiny_llama_dir, sentencepiece_tokenizer):
    tokenizer_dir = tmp_path / "tok"
    sentencepiece_tokenizer.save_pretrained(tokenizer_dir)
    out = tmp_path / "out"
    transplant(str(tiny_llama_dir), str(tokenizer_dir), out, TransplantOptions(method="subword", donor_tokenizer_only=True))
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size % 64 == 0


def test_unsupported_architecture(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    weird = tmp_path / "weird"
    weird.mkdir()
    for file in tiny_llama_dir.iterdir():
        (weird / file.name).write_bytes(file.read_bytes())
    config = json.loads((weird / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (weird / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokeffError, match="unsupported architecture BertModel"):
        transplant(str(weird), str(tiny_gemma_dir), tmp_path / "o", TransplantOptions())


@pytest.mark.slow
def test_real_pair_gemma_given_smollm2_tokenizer(tmp_path):
    """gemma3-270m given smollm2's tokenizer: a loadable model whose estimated rows beat all-zero new rows
    on held-out text, and stay within 25% of the base model (measured about 16% with subword rows)."""
    from pathlib import Path

    from tokeff.core.evaluation import bits_per_byte
    from tokeff.core.models import load_model

    wiki = (Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.txt").read_text()
    held_out = wiki[len(wiki) // 2 + 30_000:][:3000]  # bytes no transplant step samples or tunes on
    scores = {}
    for method in ("subword", "zero"):
        out = tmp_path / method
        result = transplant("gemma3-270m", "smollm2-135m", out, TransplantOptions(method=method, new_scale=1.0))
        scores[method] = bits_per_byte(load_model(str(out)), held_out, context=512).bpb
    assert result["vocabulary"]["shared"] > 40_000
    base = bits_per_byte(load_model("gemma3-270m"), held_out, context=512).bpb
    assert scores["subword"] < scores["zero"] and scores["subword"] < 1.25 * base, (scores, base)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "subword")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "subword")
    assert model.config.vocab_size == 49_152 and len(tokenizer) <= 49_152
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and all(0 <= i < len(tokenizer) for i in logits[0, -1].topk(5).indices.tolist())


def test_base_bos_kept_when_donor_adds_none(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    """Gemma starts every text with <bos>; given a tokenizer that adds none, the output tokenizer must
    still start with the donor token that carries the base <bos> row."""
    out = tmp_path / "out"
    transplant(str(tiny_gemma_dir), str(tiny_llama_dir), out, TransplantOptions(method="subword"))
    base_tokenizer, tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir), AutoTokenizer.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(tiny_llama_dir)("a")["input_ids"][0] != tokenizer.bos_token_id
    first = tokenizer("a")["input_ids"][0]
    assert first == tokenizer.bos_token_id
    base = load_file(str(tiny_gemma_dir / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(new[first], base[base_tokenizer.bos_token_id])
    manifest = json.loads((out / "tokeff.json").read_text())
    assert manifest["parameters"]["transplant"]["bos_added"] == tokenizer.convert_ids_to_tokens(first)


def test_new_scale_multiplies_only_estimated_rows(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    rows = {}
    for scale in (1.0, 0.5):
        out = tmp_path / f"x{scale}"
        transplant(str(tiny_llama_dir), str(tiny_gemma_dir), out, TransplantOptions(method="subword", new_scale=scale))
        rows[scale] = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    match = match_vocabularies(AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_gemma_dir))
    new, shared = torch.from_numpy(match.new_ids), torch.from_numpy(match.shared_ids)
    torch.testing.assert_close(rows[0.5][new], 0.5 * rows[1.0][new])
    assert rows[1.0][new].abs().sum() > 0
    torch.testing.assert_close(rows[0.5][shared], rows[1.0][shared])


def _untied(tmp_path, tiny_llama_dir):
    return untied_copy(tiny_llama_dir, tmp_path / "untied")


def _bits_per_byte(folder, documents) -> float:
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    nats = 0.0
    with torch.no_grad():
        for document in documents:
            ids = tokenizer(document, return_tensors="pt")["input_ids"]
            nats += float(torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum"))
    return nats / math.log(2) / sum(len(d.encode()) for d in documents)


def test_auto_new_scale_is_the_best_scale_on_the_tuning_text(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    """Untied: the scale touches only lm_head rows, so the reported bits per byte at each scale must be
    what the written model scores, and auto's choice must score at least as well as scale 1."""
    base = _untied(tmp_path, tiny_llama_dir)
    tune = tmp_path / "tune.txt"
    tune.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 6)
    documents = [tune.read_text()]
    out = tmp_path / "auto"
    result = transplant(str(base), str(tiny_gemma_dir), out, TransplantOptions(method="subword", tune_text=str(tune)))
    choice = result["new_scale"]
    assert choice["text"] == str(tune) and 0 < choice["value"] <= 1
    by_scale = {float(s): b for s, b in choice["bits_per_byte_by_scale"].items()}
    best = min(by_scale, key=by_scale.get)
    if by_scale[best] <= by_scale[1.0] * (1 - MIN_GAIN):
        assert choice["value"] == best
    else:
        assert choice["value"] == 1.0
    assert abs(_bits_per_byte(out, documents) - by_scale[choice["value"]]) < 1e-3
    one = tmp_path / "one"
    transplant(str(base), str(tiny_gemma_dir), one, TransplantOptions(method="subword", new_scale=1.0))
    assert abs(_bits_per_byte(one, documents) - by_scale[1.0]) < 1e-3
    lowest = tmp_path / "lowest"
    transplant(str(base), str(tiny_gemma_dir), lowest, TransplantOptions(method="subword", new_scale=0.05))
    assert abs(_bits_per_byte(lowest, documents) - by_scale[0.05]) < 1e-3 and by_scale[0.05] != by_scale[1.0]
    tensors, unscaled = load_file(str(out / "model.safetensors")), load_file(str(one / "model.safetensors"))
    torch.testing.assert_close(tensors["model.embed_tokens.weight"], unscaled["model.embed_tokens.weight"])
    match = match_vocabularies(AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(tiny_gemma_dir))
    new = torch.from_numpy(match.new_ids)
    torch.testing.assert_close(tensors["lm_head.weight"][new], choice["value"] * unscaled["lm_head.weight"][new])


def test_auto_new_scale_samples_from_the_base_model(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    result = transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "o", TransplantOptions(method="omp", method_options={"k": 4}))
    assert result["new_scale"]["text"] == f"sampled from {tiny_llama_dir}" and result["new_scale"]["tokens"] > 100
    assert "new_scale" not in transplant(str(tiny_llama_dir), str(tiny_gemma_dir), tmp_path / "z", TransplantOptions(method="zero"))
