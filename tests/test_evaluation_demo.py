"""The demo measurement (`python -m evaluation.demo`): how it reads evaluation.run's folders."""

import json

import pytest

from evaluation.demo import babi_accuracy
from evaluation.harness import PREDICTIONS_FILE


def test_babi_accuracy_reads_the_first_place_an_answer_names(tmp_path):
    rows = [{"id": "q1", "prediction": "Mary is in the kitchen.", "references": ["kitchen"]},
            {"id": "q2", "prediction": "The garden, not the kitchen", "references": ["kitchen"]},
            {"id": "q3", "prediction": "I do not know.", "references": ["office"]},
            {"id": "q4", "skipped": "too long"}]
    (tmp_path / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert babi_accuracy(tmp_path) == {"count": 3, "accuracy": pytest.approx(1 / 3)}
