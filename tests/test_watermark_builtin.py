"""Watermarks on the real built-in models: watermarked text is detected from its text alone, human text is not."""

import pytest

from tokeff.core.textio import read_text
from tokeff.decoding.types import DecodeConfig
from tokeff.decoding.watermark.detection import detect_texts
from tokeff.decoding.watermark.generation import generate_texts
from tokeff.decoding.watermark.keys import make_key

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

WIKITEXT = "../shared/data/wikitext2-valid.txt"
PROMPTS = ["The history of the city begins in the", "In mathematics, a prime number is"]


@pytest.mark.parametrize("name, scheme", [("smollm2-135m", "exp"), ("smollm2-135m", "kgw"), ("gemma3-270m", "exp")])
def test_watermark_round_trip_on_a_builtin(builtin_model, name, scheme):
    lm = builtin_model(name)
    key = make_key(scheme, lm.tokenizer, name, seed=11)
    # gemma's 262k-token vocabulary makes each step dear: one text there, two on smollm2. kgw needs
    # more tokens than exp on low-entropy text (one 48-token smollm2 text came out at p = 0.09).
    prompts = PROMPTS[:1] if name == "gemma3-270m" else PROMPTS
    tokens = 96 if scheme == "kgw" else 48
    config = DecodeConfig(max_new_tokens=tokens, temperature=1.0, seed=5, stop_at_eos=False)
    marked = generate_texts(lm, prompts, key, config, batch_size=2)
    results = detect_texts(key, lm.tokenizer, [item.text for item in marked])
    assert all(result.watermarked and result.p_value <= 0.01 for result in results), [r.p_value for r in results]
    human = read_text(WIKITEXT, max_bytes=6000)
    chunks = [human[start : start + 600] for start in range(0, 6000, 600)]
    assert not any(result.watermarked for result in detect_texts(key, lm.tokenizer, chunks))


@pytest.mark.parametrize("scheme", ["kgw", "synthid"])
def test_text_transformers_watermarked_on_smollm2_is_detected_from_its_text(builtin_model, scheme):
    """transformers' own `generate(watermarking_config=...)` on a real model; tokeff detects the decoded text."""
    import torch
    from transformers import GenerationConfig, SynthIDTextWatermarkingConfig, WatermarkingConfig

    from tokeff.decoding.watermark.keys import key_from_transformers

    lm = builtin_model("smollm2-135m")
    config = (WatermarkingConfig(hashing_key=2024) if scheme == "kgw" else
              SynthIDTextWatermarkingConfig(keys=[int(k) for k in range(101, 131)], ngram_len=5))
    key = key_from_transformers(scheme, config.to_dict(), lm.tokenizer, "smollm2-135m")
    torch.manual_seed(0)
    inputs = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    settings = dict(do_sample=True, max_new_tokens=96, min_new_tokens=96, pad_token_id=lm.tokenizer.eos_token_id)
    output = lm.model.generate(**inputs, generation_config=GenerationConfig(watermarking_config=config, **settings))
    texts = lm.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    results = detect_texts(key, lm.tokenizer, texts)
    assert all(result.p_value <= 0.01 for result in results), [r.p_value for r in results]
