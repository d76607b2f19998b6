"""The commands end to end on a saved tiny checkpoint: evaluation.run, evaluation.niah, evaluation.report."""

import json
from pathlib import Path

import pytest

from evaluation import niah, report, run
from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QUALITY_EXAMPLE = {
    "id": "quality_toy", "context": "Retief stayed at the embassy while Magnan went home. " * 6,
    "question": "Where did Retief stay?", "answer": "at the embassy", "answers": ["at the embassy"],
    "task": "quality", "meta": {"options": ["at home", "at the embassy", "on Mars", "in a bar"], "gold_index": 1}}


@pytest.fixture(scope="module")
def checkpoint(tiny_paths, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("checkpoint")
    E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths).save_pretrained(folder)
    E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """Two real SQuAD questions and a QuALITY-style one with options."""
    with open(DATA / "squad" / "dev.shared.jsonl") as f:
        lines = [next(f), next(f)]
    path = tmp_path_factory.mktemp("data") / "mixed.jsonl"
    path.write_text("".join(lines) + json.dumps(QUALITY_EXAMPLE) + "\n")
    return path


def run_args(checkpoint: str, data: Path, output: Path, system: str = "e2llm", *extra: str) -> list[str]:
    return ["--system", system, "--model", checkpoint, "--data", str(data), "--output", str(output),
            "--max-new-tokens", "3", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("system", ["e2llm", "truncation", "full", "rag"])
def test_each_system_runs_end_to_end_and_writes_predictions_summary_and_table(checkpoint, data_file, tmp_path, system):
    summary = run.main(run_args(checkpoint, data_file, tmp_path, system))
    records = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in records] == ["56be4db0acb8001400a502ec", "56be4db0acb8001400a502ed", "quality_toy"]
    assert all(isinstance(r["prediction"], str) and 0 <= r["scores"]["qa_f1"] <= 1 for r in records)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary and saved["system"] == system and saved["count"] == 3 and saved["skipped"] == 0
    assert saved["metrics"]["qa_f1"] == pytest.approx(sum(r["scores"]["qa_f1"] for r in records) / 3)
    assert saved["metrics"]["option_accuracy"] == records[2]["scores"]["option_accuracy"]
    table = (tmp_path / "summary.md").read_text()
    assert table.startswith("| system | model | dataset | n | skipped |") and f"| {system} |" in table


def test_rerun_resumes_and_keeps_finished_predictions(checkpoint, data_file, tmp_path):
    run.main(run_args(checkpoint, data_file, tmp_path, "e2llm", "--limit", "1"))
    first = read_jsonl(tmp_path / "predictions.jsonl")
    summary = run.main(run_args(checkpoint, data_file, tmp_path))
    records = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(first) == 1 and records[0] == first[0] and len(records) == 3 and summary["count"] == 3


def test_an_interrupted_last_line_is_redone(checkpoint, data_file, tmp_path):
    run.main(run_args(checkpoint, data_file, tmp_path, "e2llm", "--limit", "2"))
    text = (tmp_path / "predictions.jsonl").read_text()
    (tmp_path / "predictions.jsonl").write_text(text[:-20])  # the process died while writing line 2
    run.main(run_args(checkpoint, data_file, tmp_path, "e2llm", "--limit", "2"))
    assert [r["id"] for r in read_jsonl(tmp_path / "predictions.jsonl")] == [
        "56be4db0acb8001400a502ec", "56be4db0acb8001400a502ed"]


def test_a_folder_of_another_run_is_not_mixed_into(checkpoint, data_file, tmp_path, capsys):
    run.main(run_args(checkpoint, data_file, tmp_path, "e2llm", "--limit", "1"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(run_args(checkpoint, data_file, tmp_path, "rag", "--limit", "1"))
    assert exit_info.value.code == 2
    assert "holds a different run (system: 'e2llm' there, 'rag' now" in capsys.readouterr().err


@pytest.mark.parametrize("broken, message", [
    ({"question": None}, "line 2: field 'question' must be str, got NoneType"),
    ({"answers": None}, "line 2: field 'answers' must be list, got NoneType"),
    ({"context": ...}, "line 2: missing field 'context'"),
])
def test_malformed_line_stops_the_run_naming_file_line_and_field(checkpoint, tmp_path, capsys, broken, message):
    bad = {key: value for key, value in {**QUALITY_EXAMPLE, "id": "x2", **broken}.items() if value is not ...}
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(QUALITY_EXAMPLE) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run.main(run_args(checkpoint, data, tmp_path / "out"))
    assert exit_info.value.code == 2
    assert f"bad.jsonl, {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_haystack_option_hides_each_context_in_essays(checkpoint, tmp_path):
    summary = run.main(run_args(checkpoint, DATA / "babi" / "qa1-5_train.jsonl", tmp_path, "truncation",
                                "--limit", "2", "--haystack-tokens", "400"))
    assert summary["dataset"] == "babi/qa1-5_train@400tok" and summary["count"] == 2


def test_niah_grid_writes_results_and_heatmap_and_counts_what_does_not_fit(checkpoint, tmp_path):
    results = niah.main(["--system", "full", "--model", checkpoint, "--output", str(tmp_path), "--variant", "number",
                         "--lengths", "300", "3000", "--depths", "0", "100"])
    cells = {(c["length"], c["depth"]): c for c in json.loads((tmp_path / "results.json").read_text())["cells"]}
    assert set(cells) == {(300, 0), (300, 100), (3000, 0), (3000, 100)}
    assert cells[3000, 0]["score"] is None and "exceed the decoder window" in cells[3000, 0]["skipped"]
    assert cells[300, 100]["score"] in (0.0, 1.0) and results["lengths"] == [300, 3000]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["count"] == 2 and summary["skipped"] == 2 and summary["dataset"] == "niah-number"
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_report_compares_systems_across_datasets(checkpoint, data_file, tmp_path):
    e2llm = run.main(run_args(checkpoint, data_file, tmp_path / "e2llm", "e2llm"))
    truncation = run.main(run_args(checkpoint, data_file, tmp_path / "truncation", "truncation"))
    niah.main(["--system", "e2llm", "--model", checkpoint, "--output", str(tmp_path / "niah"), "--lengths", "300",
               "--depths", "50", "--max-new-tokens", "3"])
    text = report.main([str(tmp_path / name) for name in ("e2llm", "truncation", "niah")]
                       + ["--output", str(tmp_path / "report")])
    table = text.split("\n\n")[1].splitlines()
    assert table[0] == f"| system | {data_file.parent.name}/mixed (F1, n=3) | niah-sentence (needle recall, n=1) |"
    assert table[2].startswith(f"| e2llm | {100 * e2llm['metrics']['qa_f1']:.1f} | ")
    assert table[3] == f"| truncation | {100 * truncation['metrics']['qa_f1']:.1f} |  |"
    assert (tmp_path / "report" / "comparison.md").read_text() == text
    assert (tmp_path / "report" / "niah_heatmaps.png").read_bytes()[:4] == b"\x89PNG"


def test_report_compares_a_column_on_the_examples_all_its_runs_attempted(checkpoint, data_file, tmp_path):
    run.main(run_args(checkpoint, data_file, tmp_path / "e2llm", "e2llm"))
    run.main(run_args(checkpoint, data_file, tmp_path / "rag", "rag", "--limit", "2"))
    first_two = read_jsonl(tmp_path / "e2llm" / "predictions.jsonl")[:2]
    text = report.main([str(tmp_path / "e2llm"), str(tmp_path / "rag"), "--output", str(tmp_path / "report")])
    e2llm_row = text.split("\n\n")[1].splitlines()[2]
    assert e2llm_row == f"| e2llm | {100 * sum(r['scores']['qa_f1'] for r in first_two) / 2:.1f} |"
    assert "(F1, n=2)" in text


def test_report_refuses_a_folder_without_summary(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--output", str(tmp_path / "report")])
    assert "has no summary.json" in capsys.readouterr().err


def test_a_missing_data_file_stops_before_loading_the_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--system", "e2llm", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no.jsonl"),
                  "--output", str(tmp_path / "out")])
    assert "No such file: " in capsys.readouterr().err


def test_hybrid_flag_switches_hybrid_recall_and_is_recorded(checkpoint, data_file, tmp_path):
    run.main(run_args(checkpoint, data_file, tmp_path / "on", "e2llm", "--limit", "1", "--hybrid-top-k", "2",
                      "--hybrid-budget", "300"))
    run.main(run_args(checkpoint, data_file, tmp_path / "off", "e2llm", "--limit", "1", "--hybrid-top-k", "0"))
    on = json.loads((tmp_path / "on" / "run.json").read_text())
    off = json.loads((tmp_path / "off" / "run.json").read_text())
    assert (on["hybrid_top_k"], on["hybrid_budget"], off["hybrid_top_k"]) == (2, 300, 0)
