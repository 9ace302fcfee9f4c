"""Ctrl-C on long commands: exit 130 within seconds, even inside a native call, and nothing at the output path."""

from __future__ import annotations

import os
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tiny_models

PROMPT_S = 5.0  # how soon after Ctrl-C the process must be gone


def _start(args: list, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "tokeff", *map(str, args)], stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=log.parent
    )


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"ended before it was interrupted: {log.read_text()}"
        assert time.monotonic() < deadline, f"never got going: {log.read_text()}"
        time.sleep(0.05)


def _interrupt(process: subprocess.Popen, log: Path) -> float:
    """Send SIGINT; the seconds until the process was gone (asserting exit code 130)."""
    assert process.poll() is None, f"ended before it was interrupted: {log.read_text()}"
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        code = process.wait(timeout=60)
    finally:
        process.kill()
    assert code == 130, log.read_text()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text()
    return time.monotonic() - sent


def test_ctrl_c_stops_tokenizer_training_and_a_transplant_at_once(tmp_path, tiny_llama_dir, tiny_gemma_dir):
    # Random words: about 10 s of merges inside the Rust trainer, with no Python in between.
    rng = random.Random(0)
    words = tmp_path / "words.txt"
    words.write_text(" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(300_000)))
    shakespeare = tmp_path / "eval.txt"
    shakespeare.write_text(tiny_models.corpus(1_200_000))  # bits per byte of two models on it: many seconds

    train_out, train_log = tmp_path / "tok", tmp_path / "train.log"
    train = _start(["tokenizer", "train", "--text", words, "--vocab", 30_000, "-o", train_out], train_log)
    transplant_out, transplant_log = tmp_path / "model", tmp_path / "transplant.log"
    transplant = _start(
        ["transplant", tiny_llama_dir, "--donor", tiny_gemma_dir, "--method", "mean", "--new-scale", "1",
         "--eval-text", shakespeare, "-o", transplant_out],
        transplant_log,
    )
    try:
        _wait_until(lambda: "stage 1" in train_log.read_text(), train, train_log)
        time.sleep(2)  # past the word counting (where the trainer checks for signals itself), into the merges
        assert _interrupt(train, train_log) < PROMPT_S

        # The artifact is being written (its temporary folder exists) while both models are scored.
        _wait_until(lambda: any(tmp_path.glob(".model.partial-*")), transplant, transplant_log)
        time.sleep(0.5)
        assert _interrupt(transplant, transplant_log) < PROMPT_S
    finally:
        train.kill()
        transplant.kill()
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {"words.txt", "eval.txt", "train.log", "transplant.log"}  # no output, no partial folder
