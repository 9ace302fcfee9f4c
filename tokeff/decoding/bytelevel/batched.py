"""Byte-level scoring of a known text in a few batched forward passes, equal to the incremental model.

For a known text, the covering tree's nodes at every byte position are known before any model
call: they are tokenizations of prefixes (`ByteLevelModel.live_paths`), which need no model. So
a window is planned first: every node of every position goes into one trie (the trunk, with short
branches off it), and the trie is then scored with tree attention (`forward_masked`), each node
attending to its ancestors only, `batch_tokens` nodes per model call over a cache of the earlier
ones. The trunk before the first scored byte is fed as a plain causal prompt.

Each node's next-token log-probabilities are reduced at once to what the positions that use it
need (the 258-bin scatter for the position at its end, the binned range of tokens that continue
the text for later positions), so no vocabulary-sized row outlives its batch. One fused kernel
(`tokeff/kernels/bin_probabilities.py`) reads the float32 logits in place and sums probabilities
with float64 accumulators: a node's distribution is normalized, so nothing overflows, and nothing
a float32 model can give underflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tokeff.core.errors import TokeffError
from tokeff.core.models import LoadedModel
from tokeff.decoding.bytelevel.model import ByteLevelModel
from tokeff.decoding.bytelevel.utf8 import allowed_next
from tokeff.decoding.bytelevel.vocab import END, N_BINS, ByteVocab
from tokeff.decoding.runner import CachedRunner
from tokeff.decoding.tree_attention import forward_masked
from tokeff.decoding.types import DecodeStats
from tokeff.kernels.bin_probabilities import bin_probabilities


@dataclass
class CoverPlan:
    """One window's covering tree as a trie (node 0 the window's first token), and what each scored byte reads from it."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    children: list[dict[int, int]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # n: the scored byte is text[n]
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (scored byte index, m, node)
    text: bytes = b""
    first_node: int = 0  # the trunk node at the first scored byte: nodes before it are only context

    def child(self, parent: int, token: int) -> int:
        if parent >= 0 and token in self.children[parent]:
            return self.children[parent][token]
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(self.depth[parent] + 1 if parent >= 0 else 0)
        self.children.append({})
        if parent >= 0:
            self.children[parent][token] = len(self.tokens) - 1
        return len(self.tokens) - 1


def plan_window(lm: LoadedModel, context: bytes, scored: bytes) -> CoverPlan:
    """Walk the text as the incremental model does (same trunk, same nodes), recording nodes instead of computing them."""
    walker = ByteLevelModel(lm, text=context) if context else ByteLevelModel(lm)
    plan = CoverPlan()
    trunk: list[int] = []  # trie node of each trunk token
    for index, byte in enumerate(scored):
        while len(trunk) < len(walker.trunk):
            trunk.append(plan.child(trunk[-1] if trunk else -1, walker.trunk[len(trunk)]))
        if index == 0:
            plan.first_node = trunk[-1]
        plan.positions.append(len(walker.text))
        for m, path in walker.live_paths():
            node = trunk[-1]
            for token in path:
                node = plan.child(node, token)
            plan.entries.append((index, m, node))
        walker.append(byte, scored=False)
    plan.text = bytes(walker.text)
    return plan


def default_batch_tokens(vocab_size: int) -> int:
    """Nodes per model call: up to 1,024, as many as keep a call's float32 logits within 256 MiB. Large calls pay
    the per-call work once for more nodes (smollm2-135m scored ~30% faster at 512-1,024 nodes than at 256);
    a 262k vocabulary, where the output layer dominates, gains nothing from more and stays at 256."""
    return max(16, min(1024, 2**26 // vocab_size))


@torch.inference_mode()
def score_plan(lm: LoadedModel, plan: CoverPlan, stats: DecodeStats, batch_tokens: int | None = None) -> torch.Tensor:
    """log P(next byte | text before it) over 257 outcomes for every scored byte of the plan: [bytes, 257], float64."""
    vocab = ByteVocab.for_model(lm)
    batch_tokens = batch_tokens or default_batch_tokens(len(vocab))
    n_nodes, first = len(plan.tokens), plan.first_node
    runner = CachedRunner(lm, stats, DynamicCache())
    if first:
        runner.forward(plan.tokens[:first], logits_to_keep=1)
    depth = torch.tensor(plan.depth)
    ancestors = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
    for node, parent in enumerate(plan.parents):
        if parent >= 0:
            ancestors[node] = ancestors[parent]
        ancestors[node, node] = True
    by_node: dict[int, list[int]] = {}
    for entry, (_, _, node) in enumerate(plan.entries):
        by_node.setdefault(node, []).append(entry)
    sums = torch.zeros(len(plan.entries), N_BINS, dtype=torch.float64)
    edge = torch.zeros(n_nodes, dtype=torch.float64)  # log P(token of node | parent's sequence)
    whole_ids = torch.arange(len(vocab))
    # The cache keeps only nodes with children: a leaf (most nodes: the covers' last tokens off the trunk) is
    # nobody's ancestor, so later nodes would attend past its keys, and attention would cost ~4x as much.
    slots = list(range(first))  # the nodes whose keys the cache holds, in cache order
    for start in range(first, n_nodes, batch_tokens):
        stop = min(start + batch_tokens, n_nodes)
        keys = torch.tensor(slots + list(range(start, stop)))
        logits = forward_masked(runner, plan.tokens[start:stop], depth[start:stop], ancestors[start:stop][:, keys], depth[keys])
        entries, rows, starts, stops, ids, bins = _tasks(plan, vocab, range(start, stop), by_node, whole_ids)
        device = logits.device
        block_sums, log_norm = bin_probabilities(logits, rows.to(device), starts, stops, ids.to(device), bins.to(device), N_BINS)
        sums[entries] = block_sums.cpu()
        kids = [(node - start, token, kid) for node in range(start, stop) for token, kid in plan.children[node].items()]
        if kids:
            rows_, cols, targets = (torch.tensor(column) for column in zip(*kids))
            edge[targets] = (logits[rows_, cols].double() - log_norm[rows_]).cpu()
        parents = [node for node in range(start, stop) if plan.children[node]]
        runner.keep_new(stop - start, [node - start for node in parents])
        slots += parents
    logp_node = torch.zeros(n_nodes, dtype=torch.float64)
    for node in range(first + 1, n_nodes):
        logp_node[node] = logp_node[plan.parents[node]] + edge[node]
    return _next_byte_logprobs(plan, sums, logp_node)


def _tasks(plan: CoverPlan, vocab: ByteVocab, nodes: range, by_node: dict, whole_ids: torch.Tensor):
    """The entries of these nodes as `bin_probabilities` segments: an entry at the end of its text reads the
    whole vocabulary binned by first byte (segment 0); one behind it, the tokens that continue text[m:n]."""
    entries, rows, starts, stops = [], [], [], []
    ids, bins, offset = [whole_ids], [vocab.first_bin], len(whole_ids)
    for node in nodes:
        for entry in by_node.get(node, ()):
            index, m, _ = plan.entries[entry]
            n = plan.positions[index]
            entries.append(entry)
            rows.append(node - nodes.start)
            if m == n:
                starts.append(0)
                stops.append(len(whole_ids))
            else:
                token_ids, token_bins = vocab.next_bins(plan.text[m:n])
                ids.append(token_ids)
                bins.append(token_bins)
                starts.append(offset)
                offset += len(token_ids)
                stops.append(offset)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return entries, as_tensor(rows), as_tensor(starts), as_tensor(stops), torch.cat(ids), torch.cat(bins)


def _next_byte_logprobs(plan: CoverPlan, sums: torch.Tensor, logp_node: torch.Tensor) -> torch.Tensor:
    """Per scored byte: the entries' binned probabilities, weighted by their nodes' probabilities, masked and normalized."""
    index = torch.tensor([entry[0] for entry in plan.entries])
    nodes = torch.tensor([entry[2] for entry in plan.entries])
    values = sums.log() + logp_node[nodes, None]
    peak = torch.full((len(plan.positions), N_BINS), -math.inf, dtype=torch.float64)
    peak.scatter_reduce_(0, index[:, None].expand_as(values), values, reduce="amax")
    safe = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(peak).index_add_(0, index, torch.exp(values - safe[index]))
    scores = total.log() + safe
    allowed = torch.stack([allowed_next(plan.text[:n]) for n in plan.positions])
    scores[~allowed] = -math.inf
    scores = scores[:, : END + 1]
    norm = torch.logsumexp(scores, dim=1, keepdim=True)
    if not torch.isfinite(norm).all():
        raise TokeffError("no tokenization of the model can continue this text")
    return scores - norm


def batched_byte_logprobs(
    lm: LoadedModel, data: bytes, windows: list[tuple[int, int, int]], stats: DecodeStats, batch_tokens: int | None = None
) -> tuple[torch.Tensor, int]:
    """Next-byte log-probabilities [len(data), 257] of every byte, each window (context start, start, end)
    scoring data[start:end] after data[context start:start]; and the tree nodes fed."""
    out = torch.empty(len(data), END + 1, dtype=torch.float64)
    fed = 0
    for context_start, start, end in windows:
        plan = plan_window(lm, data[context_start:start], data[start:end])
        out[start:end] = score_plan(lm, plan, stats, batch_tokens)
        fed += len(plan.tokens)
    return out, fed
