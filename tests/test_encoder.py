"""The transformers-free encoder gives transformers' ids, and detection imports neither torch nor transformers."""

import subprocess
import sys

import pytest

from tokeff.core.encoder import Encoder, load_encoder
from tokeff.core.errors import TokeffError
from tokeff.core.models import load_tokenizer
from tokeff.core.resolve import tokenizer_folder

TEXTS = ["The history of the city begins in the", "  two leading spaces\tand a tab\n\nnewlines  ",
         "émoji 🙂 and 中文", "<bos> typed out, <|im_start|> too", "", " ", "a" * 300, "x = f(y) + 1  # code"]


def same_ids(spec: str, texts: list[str]) -> None:
    reference = load_tokenizer(spec)
    encoder = load_encoder(spec)
    assert isinstance(encoder, Encoder)
    assert len(encoder) == len(reference) and encoder.get_vocab() == reference.get_vocab()
    for special in (False, True):
        assert encoder(texts, add_special_tokens=special)["input_ids"] == \
            reference(texts, add_special_tokens=special)["input_ids"]


def test_encoder_ids_equal_transformers_on_both_tiny_families(tiny_model_dir):
    same_ids(str(tiny_model_dir), TEXTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_encoder_ids_equal_transformers_on_the_builtins(name):
    text = open("../shared/data/wikitext2-valid.txt", encoding="utf-8").read()[:200_000]
    same_ids(name, TEXTS + text.split("\n"))


def test_folder_without_tokenizer_json_falls_back_to_transformers(tiny_llama_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in tiny_llama_dir.iterdir():
        if path.name != "tokenizer.json":
            (folder / path.name).symlink_to(path)
    try:
        encoder = load_encoder(str(folder))
    except TokeffError:
        return  # transformers could not rebuild it without tokenizer.json either: refused with one line
    assert not isinstance(encoder, Encoder)


def test_malformed_tokenizer_json_is_one_line_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokeffError, match="cannot load the tokenizer"):
        Encoder(tmp_path / "tokenizer.json")
    assert tokenizer_folder(str(tmp_path)) == tmp_path


def test_watermark_detection_imports_neither_torch_nor_transformers(tiny_llama_dir, tmp_path):
    """A corpus detection worker starts without paying torch's and transformers' import (seconds per Ray actor).

    synthid alone imports torch: its sampling table is transformers' `torch.randint` draw."""
    from tokeff.decoding.watermark.keys import make_key, save_key

    for scheme in ("kgw", "exp", "synthid"):
        save_key(make_key(scheme, load_tokenizer(str(tiny_llama_dir)), str(tiny_llama_dir), seed=1), tmp_path / scheme)
    code = (
        "import sys\n"
        "from tokeff.corpus.scorers import JobSpec\n"
        "for scheme in ('kgw', 'exp', 'synthid'):\n"
        f"    scorer = JobSpec('watermark', {{'key': r'{tmp_path}/' + scheme, 'alpha': 0.01}}).build()\n"
        "    rows = scorer([{'id': 'a', 'source': 's', 'bytes': 40, 'error': None, 'text': 'the cat sat on the mat ' * 4}])\n"
        "    assert rows[0]['error'] is None and 0 < rows[0]['p_value'] <= 1, rows\n"
        "    print(scheme, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["kgw []", "exp []", "synthid ['torch']"]
