"""Loading the uniform JSONL: any file in the format runs; a malformed line names file, line and field."""

import json
from pathlib import Path

import pytest

from evaluation.data import DataFormatError, Example, dataset_name, load_examples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def record(**changes) -> dict:
    base = {"id": "q1", "context": "Mary went to the kitchen.", "question": "Where is Mary?", "answer": "kitchen",
            "answers": ["kitchen", "the kitchen"], "task": "babi", "meta": {}}
    return {**base, **changes}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_loads_every_field_of_a_valid_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(), record(id="q2", meta={"story": 1})])
    examples = load_examples(path)
    assert examples[0] == Example(id="q1", context="Mary went to the kitchen.", question="Where is Mary?",
                                  answer="kitchen", answers=["kitchen", "the kitchen"], task="babi", meta={})
    assert [e.id for e in examples] == ["q1", "q2"] and examples[1].meta == {"story": 1}


def test_limit_keeps_the_first_examples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(id=f"q{i}") for i in range(5)])
    assert [e.id for e in load_examples(path, limit=2)] == ["q0", "q1"]


def test_missing_field_names_file_line_and_field(tmp_path):
    broken = record(id="q2")
    del broken["question"]
    path = write_jsonl(tmp_path / "d.jsonl", [record(), broken])
    with pytest.raises(DataFormatError, match=r"d\.jsonl, line 2: missing field 'question'"):
        load_examples(path)


def test_wrong_type_names_file_line_field_and_type(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(), record(id="q2"), record(id="q3", answers="kitchen")])
    with pytest.raises(DataFormatError, match=r"d\.jsonl, line 3: field 'answers' must be list, got str"):
        load_examples(path)


def test_non_string_answer_in_the_list_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(answers=["kitchen", 3])])
    with pytest.raises(DataFormatError, match="line 1: field 'answers' must be a list of strings"):
        load_examples(path)


def test_quality_needs_options_and_an_integer_gold_index(tmp_path):
    options = {"options": ["a", "b"]}
    path = write_jsonl(tmp_path / "q.jsonl", [record(task="quality", meta={**options, "gold_index": True})])
    with pytest.raises(DataFormatError, match="line 1: field 'meta.gold_index' must be int, got bool"):
        load_examples(path)
    write_jsonl(path, [record(task="quality", meta=options)])
    with pytest.raises(DataFormatError, match="line 1: missing field 'meta.gold_index'"):
        load_examples(path)


def test_invalid_json_and_inconsistent_answer_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(), '{"id": "q2", "context":'])
    with pytest.raises(DataFormatError, match="line 2: not valid JSON"):
        load_examples(path)
    write_jsonl(path, [record(answer="hall")])
    with pytest.raises(DataFormatError, match="line 1: field 'answer' must equal answers"):
        load_examples(path)


def test_scored_example_without_references_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(answer="", answers=[])])
    with pytest.raises(DataFormatError, match="line 1: field 'answers' is empty"):
        load_examples(path)


def test_repeated_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [record(), record()])
    with pytest.raises(DataFormatError, match="line 2: id 'q1' repeats line 1"):
        load_examples(path)


def test_empty_and_missing_files_are_refused(tmp_path):
    with pytest.raises(DataFormatError, match="holds no examples"):
        load_examples(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(FileNotFoundError, match="No such file: .*nothing.jsonl"):
        load_examples(tmp_path / "nothing.jsonl")


def test_every_shared_development_file_loads():
    files = [DATA / "qmsum" / "val.jsonl", DATA / "quality" / "quality_subset.jsonl",
             DATA / "govreport" / "govreport_subset.jsonl", DATA / "pg_essays" / "essays.jsonl"]
    for path in files:
        examples = load_examples(path)
        assert examples and all(e.task == examples[0].task for e in examples), path


def test_dataset_name_is_folder_and_stem():
    assert dataset_name("x/data/qmsum/val.jsonl") == "qmsum/val"
