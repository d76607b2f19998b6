"""The demo measurement (`python -m evaluation.demo`): what its figures count and how it reads evaluation.run's
folders."""

import json
import statistics

import pytest

from evaluation.demo import ESSAY_QUESTIONS, answer_gap, babi_accuracy, chunk_stats, essay_questions, names_any, \
    restate
from evaluation.harness import PREDICTIONS_FILE


def test_babi_accuracy_reads_the_first_place_an_answer_names(tmp_path):
    rows = [{"id": "q1", "prediction": "Mary is in the kitchen.", "references": ["kitchen"]},
            {"id": "q2", "prediction": "The garden, not the kitchen", "references": ["kitchen"]},
            {"id": "q3", "prediction": "I do not know.", "references": ["office"]},
            {"id": "q4", "skipped": "too long"}]
    (tmp_path / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert babi_accuracy(tmp_path) == {"count": 3, "accuracy": pytest.approx(1 / 3)}


def test_chunk_stats_counts_chunks_and_their_chunk_tokens_apart(tiny_at):
    model, processor = tiny_at(4)  # 64-character chunks of 8-14 encoder tokens: 2-4 chunk tokens each
    stats = chunk_stats(model, processor, limit=5)
    assert stats["count"] == 5
    assert 2 * 5 <= stats["chunk_tokens"] <= 4 * 5


def test_restate_reports_how_noisy_its_rouge_l_is(tiny_at, monkeypatch):
    model, processor = tiny_at(None, chunk_size=256)  # restate windows of one chunk, over 100 characters
    # A model that restates the first ten words: ROUGE-L that differs from window to window.
    monkeypatch.setattr(model, "answer", lambda text, *args, **kwargs: " ".join(text.split()[:10]))
    result = restate(model, processor, limit=3, max_new_tokens=8)
    scores = [row["rougeL"] for row in result["examples"]]
    assert result["count"] == 3 and len(set(scores)) == 3
    assert result["rougeL_se"] == pytest.approx(statistics.stdev(scores) / 3 ** 0.5)


def test_names_any_matches_whole_words_ignoring_case():
    assert names_any("It was built on an IBM AS400.", ["as400", "as/400"])
    assert names_any("About\n$100k  each", ["100k"])
    assert not names_any("He had 100 seats.", ["10"])
    assert not names_any("We often met.", ["ten"])


class _Echo:
    """A stand-in model whose answer is its context (`part="context"`) or the question."""

    def __init__(self, part: str):
        self.part = part

    def answer(self, context, question, **kwargs):
        return context if self.part == "context" else question


def test_essay_questions_are_answered_by_their_own_essay_and_not_by_their_wording():
    # Every accepted answer is in the essay the question is asked over, and none is given away by the question.
    assert essay_questions(_Echo("context"), None, hybrid_top_k=5)["accuracy"] == 1.0
    result = essay_questions(_Echo("question"), None, hybrid_top_k=5)
    assert result["count"] == len(ESSAY_QUESTIONS.read_text().splitlines()) == 30
    assert result["accuracy"] == 0.0


def test_answer_gap_scores_each_answer_as_its_essay_spells_it_after_own_and_other_chunk_tokens(tiny_at):
    model, processor = tiny_at(None, chunk_size=512)
    result = answer_gap(model, processor)
    assert result["count"] == 30
    assert {"answer": "Sarbanes-Oxley", "question": "Which law does the author blame for so few startups going public?"} \
        .items() <= result["examples"][6].items()
    gaps = [row["nll_other"] - row["nll_own"] for row in result["examples"]]
    assert result["answer_gap_other"] == pytest.approx(statistics.mean(gaps), abs=1e-5)
    assert result["answer_gap_other_se"] == pytest.approx(statistics.stdev(gaps) / 30 ** 0.5, rel=1e-4)
