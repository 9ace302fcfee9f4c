"""The real built-in models (marked slow: CI runs them after `tokeff models pull --all`)."""

import pytest

from tokeff.core.artifacts import verify_artifact
from tokeff.core.builtin_models import BUILTINS
from tokeff.core.evaluation import bits_per_byte
from tokeff.core.models import describe_model
from tokeff.core.resolve import cached_folder
from tokeff.core.textio import read_text
from tokeff.decoding import get_method
from tokeff.decoding.types import DecodeConfig, Prompt
from tokeff.tokenizers_tools.canonical import TokenizerFamily, vocab_bytes

pytestmark = pytest.mark.slow

WIKITEXT = "../shared/data/wikitext2-valid.txt"
FACTS = {
    "smollm2-135m": {"architecture": "LlamaForCausalLM", "vocab_size": 49152, "tied_embeddings": True},
    "gemma3-270m": {"architecture": "Gemma3ForCausalLM", "vocab_size": 262144, "tied_embeddings": True},
}


@pytest.mark.parametrize("name", list(BUILTINS))
def test_builtin_resolves_to_a_verified_cache(name):
    facts = describe_model(name)
    assert {key: facts[key] for key in FACTS[name]} == FACTS[name]
    assert facts["tokenizer_size"] == facts["vocab_size"]
    assert verify_artifact(cached_folder(BUILTINS[name])) == []


@pytest.mark.parametrize("name, ceiling", [("smollm2-135m", 1.3), ("gemma3-270m", 1.5)])
def test_bits_per_byte_on_wikitext(builtin_model, name, ceiling):
    lm = builtin_model(name)
    result = bits_per_byte(lm, read_text(WIKITEXT, max_bytes=8000), context=512)
    # A uniform guess over 256 byte values is 8 bits; these models sit near 1 bit per byte.
    assert 0.5 < result.bpb < ceiling


def test_greedy_answers_a_factual_prompt(builtin_model):
    lm = builtin_model("smollm2-135m")
    result = get_method("greedy")(lm, DecodeConfig(max_new_tokens=8)).generate(
        Prompt.from_text(lm, "The capital of France is")
    )
    assert "Paris" in result.text


def test_canonical_bytes_bridge_the_two_vocabularies(builtin_model):
    smol, gemma = (vocab_bytes(builtin_model(name).tokenizer) for name in ("smollm2-135m", "gemma3-270m"))
    assert smol.family is TokenizerFamily.BYTE_LEVEL
    assert gemma.family is TokenizerFamily.SENTENCEPIECE and gemma.byte_fallback
    shared = {t for t in smol.token_bytes if t} & {t for t in gemma.token_bytes if t}
    assert len(shared) > 40_000  # measured 46,145 of smollm2's 49,135 ordinary tokens
