"""Load and validate evaluation data in the uniform JSONL format (one example per line).

Fields: id, context, question, answer (str), answers (list of str; answers[0] == answer), task (str),
meta (dict). QuALITY lines also need meta.options (list of str) and meta.gold_index (int); needle lines
(task "niah") need meta.key_facts (list of str). Any file in this format runs, whatever its source.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import NEEDLE_TASKS, OPTION_TASKS

FIELD_TYPES = {"id": str, "context": str, "question": str, "answer": str, "answers": list, "task": str, "meta": dict}
META_TYPES = {
    **{task: {"options": list, "gold_index": int} for task in OPTION_TASKS},
    **{task: {"key_facts": list} for task in NEEDLE_TASKS},
}
UNSCORED_TASKS = frozenset({"niah_haystack"})  # haystack essays: text only, no references


class DataFormatError(ValueError):
    """A line of an evaluation file that does not follow the uniform format."""


@dataclass(frozen=True)
class Example:
    """One evaluation example: answer `question` about `context`; `answers` are the references."""

    id: str
    context: str
    question: str
    answer: str
    answers: list[str]
    task: str
    meta: dict = field(default_factory=dict)


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Every example of a uniform JSONL file (the first `limit` ones), validated line by line.

    Raises DataFormatError naming the file, the line number and the field for any malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    examples, seen = [], {}
    with open(path, "rb") as lines:  # decoded line by line, so that a bad byte is reported with its line
        for number, raw in enumerate(lines, start=1):
            line = _decode(raw, f"{path}, line {number}")
            if not line.strip():
                continue
            example = parse_line(line, f"{path}, line {number}")
            if example.id in seen:
                raise DataFormatError(f"{path}, line {number}: id {example.id!r} repeats line {seen[example.id]}; "
                                      "ids must be unique (predictions are matched to examples by id).")
            seen[example.id] = number
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataFormatError(f"{path} holds no examples.")
    return examples


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{where}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                              "convert the file to UTF-8, e.g. with iconv -f latin1 -t utf-8.") from None


def parse_line(line: str, where: str) -> Example:
    """One validated Example from one JSONL line; `where` (file and line) starts every error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{where}: not valid JSON ({error}).") from None
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    _check_fields(record, FIELD_TYPES, where, prefix="")
    if not all(isinstance(answer, str) for answer in record["answers"]):
        raise DataFormatError(f"{where}: field 'answers' must be a list of strings.")
    if record["task"] not in UNSCORED_TASKS:
        if not record["answers"]:
            raise DataFormatError(f"{where}: field 'answers' is empty; a scored example needs a reference.")
        if record["answers"][0] != record["answer"]:
            raise DataFormatError(f"{where}: field 'answer' must equal answers[0].")
    _check_fields(record["meta"], META_TYPES.get(record["task"], {}), where, prefix="meta.")
    return Example(**{name: record[name] for name in FIELD_TYPES})


def _check_fields(record: dict, types: dict[str, type], where: str, prefix: str) -> None:
    for name, expected in types.items():
        if name not in record:
            raise DataFormatError(f"{where}: missing field '{prefix}{name}' ({expected.__name__}).")
        value = record[name]
        # bool is an int subclass in Python, but true/false is never a valid index or count here.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DataFormatError(f"{where}: field '{prefix}{name}' must be {expected.__name__}, "
                                  f"got {type(value).__name__} ({json.dumps(value)[:60]}).")


def dataset_name(path: str | Path) -> str:
    """Short label of a data file for tables: 'qmsum/val' for .../qmsum/val.jsonl."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
