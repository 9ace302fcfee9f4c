"""Corpus mode of `tokeff watermark detect` and `tokeff eval bpb`: reader, both engines, bad rows, faults."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiny_models
from helpers import run_cli
from tokeff.corpus import scorers
from tokeff.corpus.output import parts_folder
from tokeff.corpus.reader import ReaderOptions, expand_sources, read_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TIMINGS = ("seconds", "startup_seconds", "steady_docs_per_s")


def tokeff(*args):
    result = run_cli(*args)
    return result.returncode, result.stdout, result.stderr


def paragraphs(count: int) -> list[str]:
    text = (tiny_models.SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return [part for part in text.split("\n\n") if len(part) > 40][:count]


@pytest.fixture(scope="module")
def key(tmp_path_factory, tiny_llama_dir):
    path = tmp_path_factory.mktemp("corpus-key") / "kgw"
    run_cli("watermark", "keygen", "--scheme", "kgw", "-m", tiny_llama_dir, "-o", path, "--min-tokens", "6",
            "--seed", "3", check=0)
    return path


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory):
    """300 good documents with ids, then the bad rows: missing field, empty text, not JSON, invalid UTF-8."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("wb") as stream:
        for index, text in enumerate(paragraphs(300)):
            stream.write((json.dumps({"text": text, "doc": f"d{index}"}) + "\n").encode())
        stream.write(b'{"title": "no text"}\n\n{"text": "   "}\nnot json\n{"text": "caf\xe9"}\n')
    return path


@pytest.fixture(scope="module")
def parquet_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    texts = paragraphs(24)
    pq.write_table(pa.table({"body": texts[:-1] + [None], "n": list(range(len(texts)))}), path, row_group_size=5)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every Ray test (starting it costs seconds); engine ray reuses it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reader_ids_bad_rows_and_skip(jsonl_corpus, parquet_corpus, tmp_path):
    documents = list(read_corpus([jsonl_corpus], ReaderOptions(id_field="doc")))
    assert len(documents) == 304 and documents[0]["id"] == "d0" and documents[299]["id"] == "d299"
    assert [d["error"] for d in documents[300:]] == ["no 'text' string", "empty document", "not a JSON object",
                                                     "not valid UTF-8 (byte 13)"]
    assert documents[300]["id"] == f"{jsonl_corpus}:301" and documents[301]["id"] == f"{jsonl_corpus}:303"
    assert all(d["text"] is None for d in documents[300:]) and all(d["error"] is None for d in documents[:300])
    resumed = list(read_corpus([jsonl_corpus], ReaderOptions(), {str(jsonl_corpus): 298}))
    assert [d["id"] for d in resumed[:2]] == [f"{jsonl_corpus}:299", f"{jsonl_corpus}:300"]
    table = list(read_corpus([parquet_corpus], ReaderOptions(field="body")))
    assert len(table) == 24 and table[5]["id"] == f"{parquet_corpus}:6" and table[-1]["error"] == "no 'body' value"
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe")
    files = expand_sources([tmp_path / "*.txt"])
    assert files == [tmp_path / "a.txt", tmp_path / "b.txt"] == expand_sources([tmp_path])
    docs = list(read_corpus(files, ReaderOptions()))
    assert docs[0] == {"id": str(files[0]), "source": str(files[0]), "text": "one", "bytes": 3, "error": None}
    assert docs[1]["error"].startswith("not valid UTF-8")


def test_detect_corpus_local(monkeypatch, key, jsonl_corpus, parquet_corpus, tmp_path):
    out = tmp_path / "detect.jsonl"
    code, stdout, _ = tokeff("watermark", "detect", "--key", key, jsonl_corpus, "-o", out,
                             "--id-field", "doc", "--batch-size", 50, "--json")
    summary, table = json.loads(stdout), rows(out)
    assert code == 0 and not parts_folder(out).exists()
    assert len(table) == summary["documents"] == 304 and summary["failed"] == sum(r["error"] is not None for r in table)
    assert summary["failed"] >= 4 and summary["bytes"] == sum(r["bytes"] for r in table if r["error"] is None)
    assert summary["detections"] == sum(bool(r["verdict"]) for r in table) >= summary["detections_bh"]
    # start-up ends with the first batch of 50; the rate after it counts the other 254 documents
    assert 0 < summary["startup_seconds"] < summary["seconds"]
    assert summary["steady_docs_per_s"] == pytest.approx(254 / (summary["seconds"] - summary["startup_seconds"]))
    # the per-document rows are what today's detect prints for the same texts
    single = tmp_path / "one.txt"
    single.write_text(paragraphs(1)[0])
    _, stdout, _ = tokeff("watermark", "detect", "--key", key, single, "--json")
    assert json.loads(stdout)[0]["p_value"] == pytest.approx(table[0]["p_value"], rel=1e-12)
    code, _, err = tokeff("watermark", "detect", "--key", key, jsonl_corpus, "-o", out)
    assert code == 1 and "already exists" in err
    code, _, _ = tokeff("watermark", "detect", "--key", key, parquet_corpus, "--field", "body",
                        "-o", tmp_path / "p.parquet", "--fail-on-error")
    assert code == 1 and len(rows(tmp_path / "p.parquet")) == 24  # the null row fails, the job still completes


def test_bpb_corpus_local(monkeypatch, tiny_llama_dir, parquet_corpus, tmp_path):
    out = tmp_path / "bpb.parquet"
    code, stdout, _ = tokeff("eval", "bpb", "-m", tiny_llama_dir, parquet_corpus, "--field",
                             "body", "--id-field", "n", "-o", out, "--context", 32, "--json")
    summary, table = json.loads(stdout), rows(out)
    assert code == 0 and summary["documents"] == 24 and summary["failed"] == 1 and table[-1]["id"] == "23"
    good = [r for r in table if r["error"] is None]
    assert summary["bpb"] == pytest.approx(sum(r["bits"] for r in good) / sum(r["bytes"] for r in good))
    assert all(r["bits"] == pytest.approx(r["bpb"] * r["bytes"]) for r in good)
    single = tmp_path / "one.txt"
    single.write_text(paragraphs(1)[0])  # the same text through today's single-file command
    _, stdout, _ = tokeff("eval", "bpb", "-m", tiny_llama_dir, single, "--context", 32, "--json")
    assert json.loads(stdout)["bpb"] == pytest.approx(good[0]["bpb"], rel=1e-9)


def test_bad_arguments_fail_at_once_and_write_nothing(monkeypatch, key, jsonl_corpus, tmp_path):
    out = tmp_path / "out.parquet"
    cases = [
        (["watermark", "detect", "--key", tmp_path / "missing", jsonl_corpus, "-o", out], "missing"),
        (["eval", "bpb", "-m", "nope", jsonl_corpus, "-o", out], "unknown model 'nope'"),
        (["watermark", "detect", "--key", key, jsonl_corpus, "-o", tmp_path / "no" / "dir" / "o.parquet"], "cannot write"),
        (["watermark", "detect", "--key", key, jsonl_corpus, "-o", tmp_path / "out.csv"], ".parquet or .jsonl"),
        (["watermark", "detect", "--key", key, tmp_path / "absent*.jsonl", "-o", out], "no such file"),
    ]
    for args, message in cases:
        code, _, err = tokeff(*args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert list(tmp_path.iterdir()) == []


def test_resume_after_a_crash_writes_each_document_once(monkeypatch, key, jsonl_corpus, tmp_path):
    args = ["watermark", "detect", "--key", key, jsonl_corpus, "--batch-size", 40, "--json"]
    tokeff(*args, "-o", tmp_path / "whole.jsonl")
    score, calls = scorers.Scorer.__call__, []

    def crash_on_fourth_batch(self, documents):
        calls.append(len(documents))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the driver dies: three parts of 40 are on disk
        return score(self, documents)

    out = tmp_path / "resumed.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(scorers.Scorer, "__call__", crash_on_fourth_batch)
        code, _, _ = tokeff(*args, "-o", out)  # Ctrl-C: exit 130
    assert code == 130 and len(calls) == 4
    assert len(list(parts_folder(out).glob("part-*.parquet"))) == 3 and not out.exists()
    code, _, err = tokeff(*args, "-o", out)
    assert code == 1 and "--resume" in err
    code, stdout, err = tokeff(*args, "-o", out, "--resume")
    assert code == 0 and "120 documents already written" in err and json.loads(stdout)["documents"] == 304
    assert rows(out) == rows(tmp_path / "whole.jsonl") and not parts_folder(out).exists()


def test_ray_matches_local_even_when_an_actor_dies(monkeypatch, ray_session, key, jsonl_corpus, tmp_path):
    from tokeff.corpus.ray_engine import CRASH_ONCE_ENV

    args = ["watermark", "detect", "--key", key, jsonl_corpus, "--batch-size", 32, "--json"]
    _, local, _ = tokeff(*args, "-o", tmp_path / "local.parquet")
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the first actor to score a batch dies: os._exit(1)
    code, remote, _ = tokeff(*args, "-o", tmp_path / "ray.parquet", "--engine", "ray",
                             "--workers", 2)
    assert code == 0 and marker.exists()
    assert rows(tmp_path / "ray.parquet") == rows(tmp_path / "local.parquet")
    drop = lambda summary: {k: v for k, v in json.loads(summary).items() if k not in ("engine", "output", *TIMINGS)}  # noqa: E731
    assert drop(remote) == drop(local)


def test_ray_cuts_a_file_into_batch_sized_blocks(ray_session, key, jsonl_corpus):
    """One file of short documents must not reach the actors as one block, which a single actor would score alone."""
    from tokeff.corpus.engines import EngineOptions
    from tokeff.corpus.ray_engine import ray_batches

    spec = scorers.JobSpec("watermark", {"key": str(key), "alpha": 0.01})
    engine = EngineOptions(engine="ray", batch_size=32, workers=2)
    tables = list(ray_batches(spec, [jsonl_corpus], ReaderOptions(id_field="doc"), {}, engine))
    assert sum(table.num_rows for table in tables) == 304
    assert len(tables) >= 304 // 32 and max(table.num_rows for table in tables) <= 32


def test_bpb_ray_matches_local(monkeypatch, ray_session, tiny_llama_dir, parquet_corpus, tmp_path):
    args = ["eval", "bpb", "-m", tiny_llama_dir, parquet_corpus, "--field", "body", "--context", 32, "--batch-size", 8]
    tokeff(*args, "-o", tmp_path / "local.jsonl")
    code, stdout, _ = tokeff(*args, "-o", tmp_path / "ray.jsonl", "--engine", "ray", "--json")
    assert code == 0 and json.loads(stdout)["documents"] == 24
    assert rows(tmp_path / "ray.jsonl") == rows(tmp_path / "local.jsonl")


@pytest.mark.parametrize("kind", ["detect-parquet", "bpb-jsonl"])
def test_the_other_format_on_ray_matches_local(ray_session, key, tiny_llama_dir, jsonl_corpus, parquet_corpus, kind, tmp_path):
    """With the two tests above, both commands read both formats on both engines."""
    if kind == "detect-parquet":
        args = ["watermark", "detect", "--key", key, parquet_corpus, "--field", "body", "--batch-size", 8]
    else:
        args = ["eval", "bpb", "-m", tiny_llama_dir, jsonl_corpus, "--id-field", "doc", "--context", 32, "--batch-size", 64]
    tokeff(*args, "-o", tmp_path / "local.jsonl")
    code, _, _ = tokeff(*args, "-o", tmp_path / "ray.jsonl", "--engine", "ray", "--json")
    assert code == 0 and rows(tmp_path / "ray.jsonl") == rows(tmp_path / "local.jsonl") and len(rows(tmp_path / "ray.jsonl")) > 20

