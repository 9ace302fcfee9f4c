"""`tokeff watermark eval` as a library job: generate with and without the key, evaluate, write the artifact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel, load_model
from tokeff.decoding.watermark import evaluation


def run_eval(
    key_path: Path,
    model: str,
    human: Path | None,
    prompts: Path | None,
    lengths: list[int],
    edit_rates: list[float],
    texts: int = 64,
    null_texts: int = 64,
    human_texts: int = 500,
    max_new_tokens: int = 200,
    edit_length: int | None = 100,
    temperature: float = 1.0,
    alpha: float = 0.01,
    seed: int | None = 0,
    batch_size: int = 16,
    output: Path | None = None,
    load: Callable[[str], LoadedModel] | None = None,
    detector: Path | None = None,
    force: bool = False,
) -> evaluation.WatermarkEval:
    """Power of the key on `texts` fresh watermarked continuations, false positives on model and human text.

    Prompts come from `prompts` or from the first half of `human`, whose second half gives the human
    windows. With `detector` (synthid), also trains the Bayesian detector on the watermarked texts against
    the unwatermarked model and human ones and saves it there. `load` loads the model spec (default:
    `load_model`). With `output`, writes a `watermark-eval` artifact: eval.json and the power plots.
    """
    from tokeff.core.artifacts import ArtifactWriter, check_output_path
    from tokeff.core.textio import read_text
    from tokeff.decoding.types import DecodeConfig
    from tokeff.decoding.watermark.generation import generate_texts
    from tokeff.decoding.watermark.keys import check_vocabulary, load_key
    from tokeff.decoding.watermark.records import read_records

    if any(value < 1 or value > max_new_tokens for value in lengths):
        raise TokeffError(f"--lengths must be in 1..{max_new_tokens} (--max-new-tokens)")
    if any(not 0 <= value <= 1 for value in edit_rates):
        raise TokeffError("--edit-rates must be in 0..1")
    if human is None and prompts is None:
        raise TokeffError("give --human FILE (prompts come from its first half) and/or --prompts FILE")
    for path in (output, detector):
        if path is not None:
            check_output_path(path, force)
    key = load_key(key_path)
    if detector is not None:
        from tokeff.decoding.watermark import bayesian

        bayesian.check_key(key)
    human_text = read_text(human) if human is not None else None
    prompt_half, human_half = evaluation.split_corpus(human_text) if human_text else ("", "")
    lm = (load or load_model)(model)
    check_vocabulary(key, lm.tokenizer, model)
    if prompts is not None:
        prompt_list = [text for _, text in read_records(prompts, "prompt", lines=True)]
    else:
        prompt_list = evaluation.prompts_from_text(lm.tokenizer, prompt_half, texts + null_texts)
    if len(prompt_list) < texts + null_texts:
        raise TokeffError(f"need {texts + null_texts} prompts (--texts + --null-texts), found {len(prompt_list)}")
    config = DecodeConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop_at_eos=False)
    with console.progress() as bar:
        task = bar.add_task("generating", total=texts + null_texts)
        advance = lambda done: bar.advance(task, done)  # noqa: E731
        marked = generate_texts(lm, prompt_list[:texts], key, config, batch_size, on_batch=advance)
        plain = generate_texts(lm, prompt_list[texts : texts + null_texts], None, config, batch_size, on_batch=advance)
    unwatermarked = {"model": [result.token_ids for result in plain]}
    if human_half:
        unwatermarked["human"] = evaluation.human_windows(lm.tokenizer, human_half, human_texts, max_new_tokens)
    if detector is not None:
        negatives = [tokens for token_lists in unwatermarked.values() for tokens in token_lists]
        trained = bayesian.train_detector(key, [item.token_ids for item in marked], negatives, seed=seed or 0)
        bayesian.save_detector(trained, key, detector, force=force)
    result = evaluation.evaluate_detection(
        key, lm.tokenizer, [item.token_ids for item in marked], unwatermarked, lengths, edit_rates,
        edit_length=edit_length or None, alpha=alpha, seed=seed,
    )
    if output is not None:
        report = result.to_json()
        with ArtifactWriter(output, "watermark-eval", force=force, parameters={"key": str(key_path), "model": model}) as writer:
            writer.add_input("key", str(key_path), None)
            writer.metrics.update({"false_positive_rate": result.false_positives, "min_length_90": report["min_length_90"]})
            (writer.path / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
            evaluation.plot_power([result], writer.path)
    return result
