"""`--new-scale auto`: how loud the estimated output rows may be.

Every estimated row is also an output row (tied embeddings, or the rebuilt lm_head). An estimate
sits near the rows of the tokens that spell its first bytes, so with a large new vocabulary
hundreds of thousands of look-alikes compete with the right token and take its probability
(smollm2-135m given gemma3-270m's 262k tokenizer lost 25% on bytes under shared tokens at scale 1;
docs/transplant.md). Shrinking the estimated output rows by a factor s trades that leak against
the new tokens' own probability.

`auto` picks s by what a transplant is for, preserving the base model: the transplanted model's
cross-entropy, per byte, on text the base model itself samples (no data set needed; `--tune-text`
gives one instead), and keeps s = 1 unless that gains at least MIN_GAIN. With s scaling only the
new logits, each token's loss, log-sum-exp(shared logits, s * new logits) minus its target logit,
is convex in s, so a grid finds the minimum. The hidden states come from one pass with the rows at
s = 1; with tied embeddings s also scales the (few) new input rows, which that pass does not follow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tokeff.core import console
from tokeff.core.errors import TokeffError
from tokeff.core.scoring import prefix_token_id
from tokeff.core.models import LoadedModel

SCALES = tuple(i / 20 for i in range(1, 21))  # 0.05, ..., 1 (0 would be --method zero)
# A smaller gain on a 1,000-token sample is within what the choice of text moves: gemma3-270m given
# smollm2-135m's tokenizer gained 0.8-1.4% on sampled text at 0.6-0.8 and lost 1-13% on WikiText,
# where one new token (space + newline) is frequent; gains of 5-12% carried over (docs/transplant.md).
MIN_GAIN = 0.02
SAMPLES = 8
SAMPLE_TOKENS = 128
FILE_PIECES, FILE_PIECE_CHARS = 8, 4000  # a --tune-text file is scored in up to 8 pieces of 4,000 characters
_CHUNK = 64  # positions per logits block: 64 x 262k floats is 64 MiB


@dataclass
class ScaleChoice:
    scale: float
    text: str  # "sampled from BASE" or the tuning file
    tokens: int
    bytes: int
    bits_per_byte: dict[float, float]  # at each scale tried
    seconds: float

    def to_json(self) -> dict:
        return {
            "value": self.scale, "text": self.text, "tokens": self.tokens, "bytes": self.bytes,
            "bits_per_byte_by_scale": {f"{s:g}": round(b, 5) for s, b in self.bits_per_byte.items()},
            "seconds": self.seconds,
        }


def sampled_documents(base: LoadedModel, seed: int = 0, count: int = SAMPLES, tokens: int = SAMPLE_TOKENS) -> list[str]:
    """`count` texts of `tokens` tokens drawn from the base model at temperature 1, each from a document boundary."""
    torch.manual_seed(seed)
    start = torch.full((count, 1), prefix_token_id(base), device=base.device)
    with torch.inference_mode():
        out = base.model.generate(
            start, attention_mask=torch.ones_like(start), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=tokens, pad_token_id=prefix_token_id(base),
        )
    return [base.tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]


def file_documents(text: str) -> list[str]:
    return [text[i : i + FILE_PIECE_CHARS] for i in range(0, min(len(text), FILE_PIECES * FILE_PIECE_CHARS), FILE_PIECE_CHARS)]


@torch.inference_mode()
def choose_scale(base: LoadedModel, rows: dict[str, torch.Tensor], embed: str, output: str,
                 estimated_ids: torch.Tensor, tokenizer, documents: list[str], source: str) -> ScaleChoice:
    """The s in SCALES with the lowest bits per byte of `documents` when the `output` matrix's
    `estimated_ids` rows are multiplied by s. `rows` are the transplanted matrices at s = 1;
    `base` is loaded only to lend its transformer layers (its embedding rows are swapped out)."""
    started = time.perf_counter()
    model = base.model
    device, dtype = base.device, model.dtype
    embedding = model.get_input_embeddings()  # keep the module: Gemma scales its output by sqrt(hidden)
    embedding.weight = torch.nn.Parameter(rows[embed].to(device, dtype), requires_grad=False)
    embedding.num_embeddings = rows[embed].shape[0]
    # The head stays in the model's dtype (a float32 copy of a bf16 128k x 4096 head is 2 GiB more):
    # logits come out as the model computes them, and only each block of them is upcast (`_losses`).
    head = rows[output].to(device, dtype)
    is_new = torch.zeros(head.shape[0], dtype=torch.bool, device=device)
    is_new[estimated_ids.to(device)] = True
    scales = torch.tensor(SCALES, device=device)
    losses = torch.zeros(len(SCALES), dtype=torch.float64, device=device)
    tokens = total_bytes = 0
    for document in documents:
        ids = torch.tensor([tokenizer(document, add_special_tokens=True)["input_ids"]], device=device)
        if ids.shape[1] < 2:
            continue
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1]
        targets = ids[0, 1:]
        for start in range(0, len(targets), _CHUNK):
            losses += _losses(hidden[start : start + _CHUNK] @ head.T, targets[start : start + _CHUNK], is_new, scales)
        tokens += len(targets)
        total_bytes += len(document.encode("utf-8"))
    if tokens == 0:
        raise TokeffError(f"--new-scale auto: the tuning text ({source}) is too short to score")
    bpb = (losses / torch.log(torch.tensor(2.0, dtype=torch.float64)) / total_bytes).tolist()
    best = min(range(len(SCALES)), key=bpb.__getitem__)
    if bpb[best] > bpb[-1] * (1 - MIN_GAIN):
        best = len(SCALES) - 1  # keep the estimates as they are
    choice = ScaleChoice(SCALES[best], source, tokens, total_bytes, dict(zip(SCALES, bpb)), time.perf_counter() - started)
    console.info(f"--new-scale auto: {choice.scale:g} ({bpb[best]:.4f} bits/byte on {tokens} tokens {source}; at 1: {bpb[-1]:.4f})")
    return choice


def _losses(logits: torch.Tensor, targets: torch.Tensor, is_new: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `targets` (nats) at every scale of the new logits: (len(scales),);
    the block of logits is upcast to float32 for the log-sum-exps."""
    logits = logits.float()
    shared = logits.masked_fill(is_new, float("-inf")).logsumexp(dim=1)
    new_logits = logits[:, is_new]
    target = logits.gather(1, targets[:, None])[:, 0]
    target_new = is_new[targets]
    out = []
    for s in scales:
        total = torch.logaddexp(shared, (new_logits * s).logsumexp(dim=1))
        out.append((total - torch.where(target_new, target * s, target)).double().sum())
    return torch.stack(out)

