"""What dynamic tokenization saves and costs on a text: sequence length, bits per byte, time.

The text is tokenized by the model's own tokenizer and cut into segments of `context - 1` tokens
(one position goes to the boundary token); the segments are the batch the merges are learned on.
Both tokenizations are scored on the same segments, so each sees exactly the same text as context.

score mode: every segment is merged and every token, new ones included, is scored through the
    extended output layer (`DynamicHead`): bits per byte of the merged sequence against the base.
prefill mode (`prefill` = fraction f): the first f of each segment is the prompt, merged with
    merges learned on the prompts alone (the continuation is unknown at prefill time); the rest
    is scored in the model's own tokens after it, as `tokeff decode --method dynamic` uses it.

The merge table itself is information taken from the text: sending it costs about
2 * log2(V + K) bits per merge, reported as `merge_table_bpb` so no saving hides in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.core.scoring import TokenScores, score_tokens
from tokeff.tokenizers_tools.canonical import vocab_bytes
from tokeff.tokenizers_tools.dynamic.merging import DynamicVocab, merge_batch
from tokeff.tokenizers_tools.dynamic.model import EMBEDDING_SCHEMES, DynamicModel


@dataclass
class DynamicReport:
    mode: str
    merges: int  # merges learned (can be fewer than asked: pairs seen fewer than min_count times stop it)
    segments: int
    bytes: int  # bytes scored
    base_tokens: int  # tokens that the dynamic vocabulary shortens (every token, or the prompts')
    dynamic_tokens: int
    base_bpb: float
    dynamic_bpb: float
    merge_table_bpb: float
    base_seconds: float
    dynamic_seconds: float
    # score mode: the part of the bpb change at positions holding a new token (its probability
    # against its pieces' in-context probabilities); the rest is at the other positions.
    new_token_bpb_change: float | None = None

    @property
    def length_reduction(self) -> float:
        return 1 - self.dynamic_tokens / self.base_tokens

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "length_reduction": self.length_reduction,
            "bpb_change": self.dynamic_bpb - self.base_bpb,
        }


def segments_of(lm: LoadedModel, text: str, context: int) -> list[list[int]]:
    ids = lm.encode_plain(text)
    if not ids:
        raise TokeffError("the text produced no tokens")
    size = context - 1
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def evaluate_dynamic(
    lm: LoadedModel,
    text: str,
    merge_counts: Sequence[int],
    *,
    context: int = 512,
    across_words: bool = False,
    embedding: str = "mean",
    min_count: int = 2,
    prefill: float | None = None,
) -> list[DynamicReport]:
    """Length reduction and bits per byte of dynamic tokenization against the model's own tokens, for
    each asked number of merges (the model's own tokenization is scored once)."""
    if not merge_counts or min(merge_counts) < 1:
        raise TokeffError(f"--merges must be >= 1, got {list(merge_counts)}")
    lm.check_context(context, minimum=3)
    if prefill is not None and not 0 < prefill < 1:
        raise TokeffError(f"--prefill must be a fraction in (0, 1), got {prefill}")
    if embedding not in EMBEDDING_SCHEMES:
        raise TokeffError(f"unknown embedding scheme '{embedding}' (use {', '.join(EMBEDDING_SCHEMES)})")
    segments = segments_of(lm, text, context)
    vocab = vocab_bytes(lm.tokenizer)
    base_size = lm.input_rows
    cuts = [len(segment) if prefill is None else max(1, round(prefill * len(segment))) for segment in segments]
    scored = [segment if prefill is None else segment[cut:] for segment, cut in zip(segments, cuts)]
    scored_bytes = sum(len(vocab.token_bytes[token] or b"") for tokens in scored for token in tokens)
    if scored_bytes == 0:
        raise TokeffError("nothing to score: the text is too short for --prefill")
    bits = 1 / math.log(2) / scored_bytes

    base = [
        _score_segment(lm, segment, len(segment) - len(targets))
        for segment, targets in console.track(list(zip(segments, scored)), "scoring the model's own tokens")
    ]
    base_nll = [scores.token_nll[len(scores.token_ids) - len(targets) :] for scores, targets in zip(base, scored)]
    base_total = float(sum(float(nll.sum()) for nll in base_nll))
    base_seconds = sum(scores.seconds for scores in base)

    reports = []
    prompts = [segment[:cut] for segment, cut in zip(segments, cuts)]
    for count in merge_counts:
        dynamic_vocab, merged = merge_batch(prompts, vocab, base_size, count, across_words=across_words, min_count=min_count)
        model = DynamicModel(lm, dynamic_vocab, embedding)
        dynamic_nll = dynamic_seconds = new_change = 0.0
        for merged_prompt, rest, own_nll in console.track(
            list(zip(merged, scored, base_nll)), f"scoring with {len(dynamic_vocab)} merges"
        ):
            if prefill is None:  # every token, new ones included, scored through the extended output layer
                scores = _score_segment(lm, merged_prompt, 0, model.inputs_embeds, model.head.target_log_probs)
                new_change += _change_on_new_tokens(scores.token_nll, merged_prompt, own_nll, dynamic_vocab)
            else:  # the merged prompt is context; no new token is ever a target
                scores = _score_segment(lm, merged_prompt + rest, len(merged_prompt), model.inputs_embeds)
            dynamic_seconds += scores.seconds
            dynamic_nll += float(scores.token_nll.sum())
        table_bits = len(dynamic_vocab) * 2 * math.log2(base_size + len(dynamic_vocab))
        reports.append(
            DynamicReport(
                mode="score" if prefill is None else f"prefill {prefill:g}",
                merges=len(dynamic_vocab),
                segments=len(segments),
                bytes=scored_bytes,
                base_tokens=sum(cuts),
                dynamic_tokens=sum(len(sequence) for sequence in merged),
                base_bpb=base_total * bits,
                dynamic_bpb=dynamic_nll * bits,
                merge_table_bpb=table_bits / scored_bytes,
                base_seconds=base_seconds,
                dynamic_seconds=dynamic_seconds,
                new_token_bpb_change=new_change * bits if prefill is None else None,
            )
        )
    return reports


def _score_segment(lm: LoadedModel, ids: list[int], first_scored: int, embed=None, log_probs=None) -> TokenScores:
    """One segment in one window (the boundary token, then `ids`), scored from `first_scored` on."""
    return score_tokens(lm, ids, context=len(ids) + 1, first_scored=first_scored, embed=embed, log_probs=log_probs,
                        label=None)


def _change_on_new_tokens(nll: torch.Tensor, merged: list[int], own_nll: torch.Tensor, vocab: DynamicVocab) -> float:
    """Sum over new-token positions of (its nll - the summed own-tokenization nll of its pieces)."""
    change, offset = 0.0, 0
    for position, token in enumerate(merged):
        width = len(vocab.pieces[token - vocab.base_size]) if token >= vocab.base_size else 1
        if width > 1:
            change += float(nll[position]) - float(own_nll[offset : offset + width].sum())
        offset += width
    return change
