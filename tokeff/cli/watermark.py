"""`tokeff watermark keygen|export|generate|detect|eval`: keys, transformers configs, watermarked text, detection, evaluation."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokeff.cli import corpus
from tokeff.cli.options import CorpusArgs, Force, Json, Model, ModelArgs, Output, TrustRemoteCode, with_shared_args
from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.options import cli_parameters, with_cli_parameters

app = typer.Typer(help="Watermark generated text and detect it.", no_args_is_help=True)

KeyPath = Annotated[Path, typer.Option("--key", "-k", help="A watermark key written by `tokeff watermark keygen`.")]
Alpha = Annotated[float, typer.Option(help="Significance level of the verdict.")]
Seed = Annotated[int | None, typer.Option(help="Random seed (sampling and each text's key offset).")]


def _scheme_options(detection: bool = False) -> dict:
    """Each scheme's key parameters (or only those `detect` may override), for `cli_parameters`."""
    from tokeff.decoding.watermark.scheme import SCHEMES

    return {name: [o for o in cls.options if not detection or o.name in cls.detection_options]
            for name, cls in SCHEMES.items()}


@app.command()
@with_cli_parameters(cli_parameters(_scheme_options(), "scheme"))
def keygen(
    model: Model,
    output: Output,
    scheme: Annotated[str, typer.Option(help="Watermark scheme: exp (distortion-free, edit-robust), kgw (green list) or synthid (tournament).")] = "exp",
    param: Annotated[list[str] | None, typer.Option("--param", help="A key parameter as KEY=VALUE (repeatable), instead of its flag.")] = None,
    seed: Annotated[int | None, typer.Option(help="Derive the secret from this seed (reproducible, so not secret).")] = None,
    from_transformers: Annotated[Path | None, typer.Option(help="A transformers watermarking config (JSON) to read the key from: --scheme synthid or kgw.")] = None,
    trust_remote_code: TrustRemoteCode = False,
    force: Force = False,
    json: Json = False,
    **parameters,
) -> None:
    """Write a new secret key (artifact) for a model's tokenizer; every scheme parameter is stored in it."""
    from tokeff.core.models import load_tokenizer
    from tokeff.core.options import parse_assignments
    from tokeff.core.textio import read_text
    from tokeff.decoding.watermark.keys import key_from_transformers, make_key, save_key
    from tokeff.decoding.watermark.scheme import SCHEMES

    cls = SCHEMES.get(scheme)
    overrides = {**parameters, **parse_assignments(param or [], cls.options)}
    config = None
    if from_transformers is not None:
        if any(value is not None for value in overrides.values()) or seed is not None:
            raise TokeffError("--from-transformers takes every parameter from the config: drop the parameter flags and --seed")
        try:
            config = jsonlib.loads(read_text(from_transformers))
        except jsonlib.JSONDecodeError as error:
            raise TokeffError(f"{from_transformers}: not JSON ({error.msg})") from None
        if not isinstance(config, dict):
            raise TokeffError(f"{from_transformers}: expected a JSON object (a watermarking config's to_dict())")
        cls.from_transformers(config)  # a bad config fails before the tokenizer loads
    else:
        cls.parameters(overrides)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    if config is not None:
        key = key_from_transformers(scheme, config, tokenizer, model)
    else:
        key = make_key(scheme, tokenizer, model, seed=seed, **overrides)
    save_key(key, output, force=force)
    if seed is not None:
        console.warn("a key derived from --seed is only as secret as the seed")
    summary = {"key": str(output), "model": model, **key.manifest_parameters()}
    if json:
        console.emit_json(summary)
    else:
        console.stdout.print(f"{output}\t{scheme}\t" + " ".join(f"{k}={v}" for k, v in key.params.items()))


@app.command()
def export(
    key: KeyPath,
    output: Annotated[Path, typer.Option("-o", "--output", help="The transformers watermarking config (JSON) to write.")],
    force: Force = False,
    json: Json = False,
) -> None:
    """Write a key as a transformers watermarking config, for `model.generate(watermarking_config=...)`.

    synthid keys become a SynthIDTextWatermarkingConfig, kgw keys made with --hashing lefthash or selfhash a
    WatermarkingConfig. The file holds the key's secret.
    """
    from tokeff.core.textio import write_text_atomic
    from tokeff.decoding.watermark.keys import load_key

    watermark = load_key(key)
    config = watermark.rule.to_transformers()
    write_text_atomic(output, jsonlib.dumps(config, indent=2) + "\n", force=force)
    if json:
        console.emit_json({"output": str(output), "scheme": watermark.scheme, "fields": sorted(config)})
    else:
        console.stdout.print(f"{output}\t{watermark.scheme}\t" + " ".join(sorted(config)))


@app.command()
@with_shared_args
def generate(
    key: KeyPath,
    model: Model,
    prompt_file: Annotated[Path, typer.Option(help="Prompts: one per line, or a .jsonl file with a 'prompt' field.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .jsonl (prompt, text, tokens, token_ids, offset).")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per continuation.")] = 200,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (kgw also allows 0, greedy).")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    seed: Seed = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 16,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap each prompt in the tokenizer's chat template.")] = False,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Always generate --max-new-tokens tokens.")] = False,
    loader: ModelArgs = ModelArgs(),
    force: Force = False,
    json: Json = False,
) -> None:
    """Watermarked continuations of many prompts, generated in batches, written as JSONL."""
    from tokeff.core.textio import write_text_atomic
    from tokeff.decoding.types import DecodeConfig
    from tokeff.decoding.watermark.generation import generate_texts
    from tokeff.decoding.watermark.keys import check_vocabulary, load_key
    from tokeff.decoding.watermark.records import read_records

    if max_new_tokens < 1 or batch_size < 1:
        raise TokeffError("--max-new-tokens and --batch-size must be >= 1")
    if output.exists() and not force:
        raise TokeffError(f"{output} already exists (use --force to replace it)")
    watermark = load_key(key)
    prompts = [text for _, text in read_records(prompt_file, "prompt", lines=True)]
    if not prompts:
        raise TokeffError(f"{prompt_file}: no prompts")
    config = DecodeConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, stop_at_eos=not ignore_eos)
    lm = loader.load(model)
    check_vocabulary(watermark, lm.tokenizer, model)
    with console.progress() as bar:
        task = bar.add_task("generating", total=len(prompts))
        results = generate_texts(lm, prompts, watermark, config, batch_size=batch_size, chat=chat,
                                 on_batch=lambda done: bar.advance(task, done))
    lines = "".join(jsonlib.dumps(result.to_json(), ensure_ascii=False) + "\n" for result in results)
    write_text_atomic(output, lines, force=force)
    tokens = sum(len(result.token_ids) for result in results)
    if json:
        console.emit_json({"output": str(output), "texts": len(results), "tokens": tokens, "scheme": watermark.scheme})
    else:
        console.stdout.print(f"{output}\t{len(results)} texts\t{tokens} tokens")


@app.command()
@with_shared_args
@with_cli_parameters(cli_parameters(_scheme_options(detection=True), "override the key's"))
def detect(
    key: KeyPath,
    files: Annotated[list[Path], typer.Argument(help="Text files (one text each), .jsonl files (a 'text' per line) or -.")],
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (model spec); default: the key's model.")] = None,
    alpha: Alpha = 0.01,
    detector: Annotated[Path | None, typer.Option(help="synthid: also report the posterior of a `train-detector` artifact.")] = None,
    trust_remote_code: TrustRemoteCode = False,
    json: Json = False,
    corpus_args: CorpusArgs = CorpusArgs(),
    **overrides,
) -> None:
    """One line per text: verdict, p-value, statistic, tokens. Needs the key and tokenizer, never the model.

    Exit 1 if any text could not be tested (empty or shorter than the key's min_tokens).
    With -o (corpus mode): files, folders, globs, JSONL or Parquet; one row per document, a summary on stdout.
    """
    from tokeff.decoding.watermark.detection import detect_texts
    from tokeff.decoding.watermark.keys import key_tokenizer, load_key
    from tokeff.decoding.watermark.records import read_records

    if not 0 < alpha < 1:
        raise TokeffError(f"--alpha must be in (0, 1), got {alpha}")
    if corpus_args.output is not None and detector is not None:
        raise TokeffError("--detector is not available in corpus mode (-o)")
    if corpus_args.output is not None:
        params = dict(key=str(key), tokenizer=tokenizer, alpha=alpha, overrides=overrides,
                      trust_remote_code=trust_remote_code)
        corpus.run_corpus("watermark", params, files, corpus_args, json)
        return
    watermark = load_key(key).for_detection(overrides)
    trained = None
    if detector is not None:  # the trained detector needs torch; plain detection does not import it
        from tokeff.decoding.watermark.bayesian import load_detector

        trained = load_detector(detector)
    records = [record for path in files for record in read_records(path, "text", lines=False)]
    loaded = key_tokenizer(watermark, tokenizer, trust_remote_code)
    results = detect_texts(watermark, loaded, [text for _, text in records], alpha=alpha, detector=trained)
    if json:
        console.emit_json([{"source": source, "scheme": watermark.scheme, "alpha": alpha, **result.to_json()}
                           for (source, _), result in zip(records, results)])
    else:
        for (source, _), result in zip(records, results):  # tab-separated plain lines, for grep and cut
            sys.stdout.write(_detection_line(source, result) + "\n")
    if any(result.error for result in results):
        raise typer.Exit(1)


def _detection_line(source: str, result) -> str:
    if result.error:
        return f"{source}\tno verdict\t{result.error}"
    verdict = "watermarked" if result.watermarked else "not watermarked"
    at_floor = result.p_floor is not None and result.p_value <= result.p_floor * (1 + 1e-9)
    p_value = f"p<={result.p_floor:.2g}" if at_floor else f"p={result.p_value:.3g}"
    posterior = f"\tposterior={result.details['posterior']:.3g}" if "posterior" in result.details else ""
    return f"{source}\t{verdict}\t{p_value}\tstatistic={result.statistic:.2f}\ttokens={result.tokens}{posterior}"


@app.command("train-detector")
def train_detector(
    key: KeyPath,
    watermarked: Annotated[list[Path], typer.Option(help="Watermarked texts: files or .jsonl ('text' per line); repeatable.")],
    unwatermarked: Annotated[list[Path], typer.Option(help="Texts that never saw the key, same formats; repeatable.")],
    output: Output,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (model spec); default: the key's model.")] = None,
    steps: Annotated[int, typer.Option(help="Adam steps over the training texts.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the initial weights.")] = 0,
    trust_remote_code: TrustRemoteCode = False,
    force: Force = False,
    json: Json = False,
) -> None:
    """Train SynthID's Bayesian detector on your own texts (optional: `detect` needs no training).

    A quarter of the texts is held out; the artifact records the accuracy on them.
    """
    from tokeff.decoding.watermark import bayesian
    from tokeff.decoding.watermark.keys import key_tokenizer, load_key
    from tokeff.decoding.watermark.records import read_records

    if steps < 1:
        raise TokeffError("--steps must be >= 1")
    watermark = load_key(key)
    loaded = key_tokenizer(watermark, tokenizer, trust_remote_code)

    def tokens(paths: list[Path]) -> list:
        texts = [text for path in paths for _, text in read_records(path, "text", lines=False)]
        return loaded(texts, add_special_tokens=False)["input_ids"] if texts else []

    trained = bayesian.train_detector(watermark, tokens(watermarked), tokens(unwatermarked), steps=steps, seed=seed)
    bayesian.save_detector(trained, watermark, output, force=force)
    if json:
        console.emit_json({"output": str(output), **trained.metrics})
    else:
        console.stdout.print(f"{output}\theld-out accuracy {trained.metrics['held_out_accuracy']:.1%} "
                             f"({trained.metrics['held_out_texts']} texts)")


@app.command("eval")
@with_shared_args
def evaluate(
    key: KeyPath,
    model: Model,
    human: Annotated[Path | None, typer.Option(help="Human text: false positives on its windows; prompts from its other half.")] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompts file (one per line or .jsonl), instead of --human's first half.")] = None,
    texts: Annotated[int, typer.Option(help="Watermarked texts generated.")] = 64,
    null_texts: Annotated[int, typer.Option(help="Unwatermarked model texts generated (false positives).")] = 64,
    human_texts: Annotated[int, typer.Option(help="Human windows tested (false positives).")] = 500,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per generated text (the longest length tested).")] = 200,
    lengths: Annotated[str, typer.Option(help="Comma-separated text lengths in tokens.")] = "8,12,16,24,32,48,64,96,128,200",
    edit_rates: Annotated[str, typer.Option(help="Comma-separated edit rates (fraction of tokens edited).")] = "0,0.2,0.4",
    edit_length: Annotated[int, typer.Option(help="Length for power vs edit rate per edit kind (0: skip).")] = 100,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    alpha: Alpha = 0.01,
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 16,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Artifact folder for eval.json and the plots.")] = None,
    train_detector: Annotated[Path | None, typer.Option(help="synthid: also train the Bayesian detector on these texts, saved here.")] = None,
    loader: ModelArgs = ModelArgs(),
    force: Force = False,
    json: Json = False,
) -> None:
    """Detection power vs length and vs random edits, false-positive rate on model and human text."""
    from tokeff.decoding.watermark.harness import run_eval

    result = run_eval(
        key, model, human, prompts, _numbers(lengths, int, "--lengths"), _numbers(edit_rates, float, "--edit-rates"),
        texts=texts, null_texts=null_texts, human_texts=human_texts, max_new_tokens=max_new_tokens,
        edit_length=edit_length, temperature=temperature, alpha=alpha, seed=seed, batch_size=batch_size,
        output=output, load=loader.load, detector=train_detector, force=force,
    )
    if json:
        console.emit_json(result.to_json())
        return
    _print_eval(result)


def _print_eval(result) -> None:
    table = Table("edit rate", *[str(length) for length in sorted({row["length"] for row in result.power_vs_length})],
                  "90% at", title=f"{result.scheme}: detected at p <= {result.alpha:g} (watermarked texts)")
    for rate in sorted({row["edit_rate"] for row in result.power_vs_length}):
        rows = sorted((row for row in result.power_vs_length if row["edit_rate"] == rate), key=lambda row: row["length"])
        shortest = result.min_length(rate)
        table.add_row(f"{rate:.0%}", *[_rate(row) for row in rows], f"{shortest} tokens" if shortest else "never")
    console.stdout.print(table)
    if result.power_vs_edits:
        kinds = sorted({row["kind"] for row in result.power_vs_edits})
        rates = sorted({row["edit_rate"] for row in result.power_vs_edits})
        table = Table("edit kind", *[f"{rate:.0%}" for rate in rates],
                      title=f"{result.scheme}: power vs edit rate at {result.power_vs_edits[0]['length']} tokens")
        for kind in kinds:
            cells = {row["edit_rate"]: row for row in result.power_vs_edits if row["kind"] == kind}
            table.add_row(kind, *[_rate(cells[rate]) if rate in cells else "" for rate in rates])
        console.stdout.print(table)
    table = Table("unwatermarked", "texts", "false positives", "rate", "95% interval",
                  title=f"{result.scheme}: false positives at alpha {result.alpha:g}")
    for source, entry in result.false_positives.items():
        interval = f"{entry['ci95'][0]:.2%} - {entry['ci95'][1]:.2%}" if entry["ci95"] else ""
        table.add_row(source, str(entry["texts"]), str(entry["hits"]), _rate(entry), interval)
    console.stdout.print(table)


def _rate(entry: dict) -> str:
    return "" if entry["rate"] is None else f"{entry['rate']:.1%}"


def _numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TokeffError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise TokeffError(f"{flag}: no values")
    return values
