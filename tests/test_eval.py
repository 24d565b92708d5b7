"""``lychee-rerank eval``: metrics from ir-measures checked by hand, the BEIR loader, the command end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("ir_measures", reason="the eval tests need ir-measures: pip install 'lychee-rerank[eval]'")
pytest.importorskip("bm25s", reason="the eval tests need bm25s: pip install 'lychee-rerank[eval]'")

from lychee_rerank.core.cli import main
from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.evaluation import evaluate, load_beir, per_query, read_trec_run, write_trec_run
from lychee_rerank.core.evaluation.first_stage import bm25_run
from lychee_rerank.core.evaluation.metrics import METRICS


def test_metrics_equal_hand_computed_values_for_one_query() -> None:
    # Ranked: d2 (grade 0), d1 (grade 1), d4 (unjudged), d3 (grade 2); d5 (grade 1) never retrieved.
    qrels = {"q1": {"d1": 1, "d2": 0, "d3": 2, "d5": 1}}
    run = {"q1": {"d1": 0.5, "d2": 0.9, "d3": 0.1, "d4": 0.3}}
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    values = evaluate(qrels, run)
    assert values["ndcg@10"] == pytest.approx(dcg / ideal, abs=1e-9)
    assert values["mrr@10"] == pytest.approx(1 / 2)
    assert values["recall@10"] == pytest.approx(2 / 3)  # d1 and d3 of the three relevant
    assert values["recall@100"] == pytest.approx(2 / 3)


def test_a_query_missing_from_the_run_counts_as_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}}
    assert per_query(qrels, run)["q2"] == dict.fromkeys(METRICS, 0.0)
    assert evaluate(qrels, run)["mrr@10"] == pytest.approx(0.5)


def test_mrr_at_10_ignores_a_first_hit_below_rank_10() -> None:
    qrels = {"q": {"relevant": 1}}
    run = {"q": {**{f"d{i}": 1.0 - i / 100 for i in range(10)}, "relevant": 0.0}}
    values = evaluate(qrels, run)
    assert values["mrr@10"] == 0.0
    assert values["recall@100"] == 1.0


def test_trec_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"a": 0.25, "b": 0.75}, "q2": {"c": -1.0}}
    write_trec_run(tmp_path / "run.trec", run, tag="t")
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "q1 Q0 b 1 0.750000 t"
    assert read_trec_run(tmp_path / "run.trec") == run


def test_sample_dataset_loads_with_images_resolved_under_its_folder() -> None:
    dataset = load_beir("sample")
    assert len(dataset.corpus) == 30
    assert len(dataset.queries) == 12
    images = [content["image"] for content in dataset.corpus.values()]
    assert all(Path(image).is_file() for image in images)
    assert any("text" not in query for query in dataset.queries.values())  # image-only queries
    assert sum(path.stat().st_size for path in Path(images[0]).parents[1].rglob("*") if path.is_file()) < 1_000_000


def test_load_beir_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(LycheeError, match=r"corpus\.jsonl is missing"):
        load_beir(tmp_path)
    with pytest.raises(LycheeError, match=r"dev\.tsv is missing"):
        load_beir(tmp_path, split="dev")


def test_bm25_first_stage_finds_the_named_product() -> None:
    dataset = load_beir("sample")
    run = bm25_run(dataset, depth=100)
    # The navy dress's caption names its colour: BM25 ranks it first for "navy dress".
    assert max(run["t1"], key=run["t1"].__getitem__) == "navy-dress"
    # The red shirt's caption leaves its colour to the photo: BM25 cannot put it first for "red shirt".
    assert max(run["t0"], key=run["t0"].__getitem__) != "red-shirt"
    assert "i1" not in run  # an image-only query has no words to search with


def test_eval_command_end_to_end_on_the_sample(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_path, output = tmp_path / "metrics.json", tmp_path / "reranked.trec"
    status = main(
        [
            "eval", "sample", "--model", str(tiny_model_dir), "--device", "cpu", "--top-k", "5",
            "--json", str(metrics_path), "--output", str(output), "--no-progress", "--instruction", "ecommerce",
        ]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    for label in ("NDCG@10", "MRR@10", "Recall@10", "Recall@100", "per query NDCG@10"):
        assert label in printed
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"first_stage", "reranked"}
    for side in metrics.values():
        assert set(side) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}
        assert all(0.0 <= value <= 1.0 for value in side.values())
    # The reranked run is what the metrics were computed on; documents past the top 5 keep BM25's order.
    dataset = load_beir("sample")
    reranked = read_trec_run(output)
    assert evaluate(dataset.qrels, reranked) == pytest.approx(metrics["reranked"])
    first = bm25_run(dataset, depth=100)
    assert evaluate(dataset.qrels, first) == pytest.approx(metrics["first_stage"])
    for query_id, scores in reranked.items():
        head = sorted(first[query_id], key=lambda doc: (-first[query_id][doc], doc))[:5]
        assert {doc for doc, value in scores.items() if value >= 0} == set(head)
    # Recall@100 cannot change when the reranked documents are the first stage's top k.
    assert metrics["reranked"]["recall@100"] == pytest.approx(metrics["first_stage"]["recall@100"])


def test_eval_command_with_a_run_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "first.trec"
    write_trec_run(run_file, {"i1": {"green-mug": 0.2, "red-mug": 0.9, "green-shirt": 0.5}}, tag="image-retriever")
    metrics_path = tmp_path / "m.json"
    status = main(
        [
            "eval", "sample", "--run", str(run_file), "--model", str(tiny_model_dir), "--device", "cpu",
            "--json", str(metrics_path), "--output", str(tmp_path / "out.trec"), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    assert set(read_trec_run(tmp_path / "out.trec")) == {"i1"}
    assert json.loads(metrics_path.read_text())["first_stage"]["recall@10"] > 0


def test_eval_refuses_a_run_naming_unknown_documents(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "first.trec"
    write_trec_run(run_file, {"t0": {"no-such-doc": 1.0}}, tag="x")
    status = main(["eval", "sample", "--run", str(run_file), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert status == 2


def test_eval_through_a_running_service_equals_eval_in_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lychee_rerank.core.server.background import running_service

    common = ["eval", "sample", "--top-k", "4", "--no-progress"]
    local_json, remote_json = tmp_path / "local.json", tmp_path / "remote.json"
    local_args = ["--model", str(tiny_model_dir), "--device", "cpu", "--output", str(tmp_path / "local.trec")]
    assert main([*common, *local_args, "--json", str(local_json)]) == 0
    with running_service(tiny_model_dir) as service:
        remote_args = ["--url", service.url, "--output", str(tmp_path / "remote.trec"), "--json", str(remote_json)]
        assert main([*common, *remote_args]) == 0
    local, remote = read_trec_run(tmp_path / "local.trec"), read_trec_run(tmp_path / "remote.trec")
    assert local.keys() == remote.keys()
    for query_id, scores in local.items():
        assert remote[query_id] == pytest.approx(scores, abs=1e-5)
    remote_metrics, local_metrics = json.loads(remote_json.read_text()), json.loads(local_json.read_text())
    for side in ("first_stage", "reranked"):
        assert remote_metrics[side] == pytest.approx(local_metrics[side])
