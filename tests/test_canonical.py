import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tokeff.tokenizers_tools.canonical import TokenizerFamily, gpt2_byte_decoder, piece_bytes, vocab_bytes

SAMPLES = ["Hello world", "  two  spaces\n\nand lines", "naïve café 😀 <0x41>", "def f(x):\n    return x"]


def test_gpt2_byte_alphabet_is_a_bijection():
    decoder = gpt2_byte_decoder()
    assert sorted(decoder.values()) == list(range(256))
    assert decoder["Ġ"] == ord(" ") and decoder["Ċ"] == ord("\n") and decoder["A"] == ord("A")


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_level_tokens_concatenate_to_the_text(byte_level_tokenizer, text):
    vocab = vocab_bytes(byte_level_tokenizer)
    assert vocab.family is TokenizerFamily.BYTE_LEVEL
    ids = byte_level_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(vocab.token_bytes[i] for i in ids) == text.encode()


@pytest.mark.parametrize("text", SAMPLES)
def test_sentencepiece_tokens_concatenate_to_the_text(sentencepiece_tokenizer, text):
    vocab = vocab_bytes(sentencepiece_tokenizer)
    assert vocab.family is TokenizerFamily.SENTENCEPIECE and vocab.byte_fallback
    ids = sentencepiece_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(vocab.token_bytes[i] for i in ids) == text.encode()


def test_special_tokens_have_no_bytes(sentencepiece_tokenizer):
    vocab = vocab_bytes(sentencepiece_tokenizer)
    bos = sentencepiece_tokenizer.bos_token_id
    assert bos in vocab.special_ids and vocab.token_bytes[bos] is None


def test_piece_bytes_rules():
    assert piece_bytes("▁the", TokenizerFamily.SENTENCEPIECE) == b" the"
    assert piece_bytes("<0x0A>", TokenizerFamily.SENTENCEPIECE, byte_fallback=True) == b"\n"
    assert piece_bytes("<0x0A>", TokenizerFamily.SENTENCEPIECE, byte_fallback=False) == b"<0x0A>"
    assert piece_bytes("Ġthe", TokenizerFamily.BYTE_LEVEL) == b" the"
    assert piece_bytes("Ã©", TokenizerFamily.BYTE_LEVEL) == "é".encode()
    assert piece_bytes("##ing", TokenizerFamily.WORDPIECE) == b"ing"
    assert piece_bytes("word", TokenizerFamily.WORDPIECE) == b" word"


def test_wordpiece_family_detected():
    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "run": 1, "##ning": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    vocab = vocab_bytes(tokenizer)
    assert vocab.family is TokenizerFamily.WORDPIECE
    assert vocab.token_bytes[1:] == [b" run", b"ning"]


def test_shared_tokens_found_across_families(byte_level_tokenizer, sentencepiece_tokenizer):
    """Raw strings share almost nothing between the families; canonical bytes share a lot."""
    a, b = vocab_bytes(byte_level_tokenizer), vocab_bytes(sentencepiece_tokenizer)
    raw_a = set(byte_level_tokenizer.get_vocab())
    raw_b = set(sentencepiece_tokenizer.get_vocab())
    canonical_shared = {t for t in a.token_bytes if t} & {t for t in b.token_bytes if t}
    spaced_raw = {t for t in raw_a & raw_b if t.startswith(("Ġ", "▁"))}
    assert not spaced_raw
    assert sum(1 for t in canonical_shared if t.startswith(b" ")) > 20
    assert b.id_of(b" ") is not None and a.id_of(b" ") is not None


def test_regular_piece_preferred_over_byte_fallback(sentencepiece_tokenizer):
    """`!` and `<0x21>` spell the same byte; the tokenizer emits only `!`, so matching must pick it."""
    vocab = vocab_bytes(sentencepiece_tokenizer)
    both = [i for i in vocab.fallback_ids if sum(data == vocab.token_bytes[i] for data in vocab.token_bytes) > 1]
    assert both, "the tiny tokenizer should have bytes spelled both ways"
    for fallback_id in both:
        chosen = vocab.id_of(vocab.token_bytes[fallback_id])
        assert chosen not in vocab.fallback_ids
        assert sentencepiece_tokenizer.convert_ids_to_tokens(chosen) != sentencepiece_tokenizer.convert_ids_to_tokens(fallback_id)
