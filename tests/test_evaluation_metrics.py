"""Metrics against hand-computed values (paper section 4.2: QA F1, option accuracy, ROUGE, G-mean)."""

import math

import pytest

from evaluation.metrics import (aggregate, geometric_mean, needle_recall, normalize_answer, pick_option,
                                primary_metric, qa_scores, rouge_scores, score_prediction)


def test_normalize_lowercases_and_drops_punctuation_articles_and_extra_space():
    assert normalize_answer("  The Cat,  sat on AN old-mat!\n") == "cat sat on oldmat"


def test_normalize_keeps_articles_inside_words():
    assert normalize_answer("Theater and another apple") == "theater and another apple"


def test_qa_scores_count_unigram_overlap():
    # prediction -> [cat, sat, on, mat], reference -> [cat, on, mat]: 3 in common.
    scores = qa_scores("The cat sat on the mat.", ["a cat on the mat"])
    assert scores["qa_precision"] == pytest.approx(3 / 4)
    assert scores["qa_recall"] == pytest.approx(3 / 3)
    assert scores["qa_f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)


def test_qa_scores_count_repeated_words_only_as_often_as_the_reference_has_them():
    # [paris, paris, paris] vs [paris]: 1 in common -> precision 1/3, recall 1, F1 0.5.
    scores = qa_scores("Paris Paris Paris", ["Paris"])
    assert scores == pytest.approx({"qa_precision": 1 / 3, "qa_recall": 1.0, "qa_f1": 0.5})


def test_qa_scores_take_the_best_reference():
    # vs "Denver": P 1/2, R 1, F1 2/3; vs "Denver Broncos": P 1, R 1, F1 1.
    scores = qa_scores("Denver Broncos", ["Denver", "Denver Broncos", "Carolina Panthers"])
    assert scores == pytest.approx({"qa_precision": 1.0, "qa_recall": 1.0, "qa_f1": 1.0})


def test_empty_prediction_scores_zero():
    assert qa_scores("", ["Denver Broncos"]) == {"qa_precision": 0.0, "qa_recall": 0.0, "qa_f1": 0.0}


def test_punctuation_only_prediction_scores_zero():
    assert qa_scores("?!...", ["Denver Broncos"])["qa_f1"] == 0.0


def test_prediction_and_reference_that_both_normalize_to_nothing_agree():
    assert qa_scores("The.", ["a"])["qa_f1"] == 1.0


def test_qa_scores_need_a_reference():
    with pytest.raises(ValueError, match="at least one reference"):
        qa_scores("anything", [])


OPTIONS = ["They know Clinton cheats on his wife", "They were Clinton-haters",
           "He could not have gotten back home without being found out", "It was published by the Washington Times"]


def test_pick_option_chooses_the_option_the_answer_matches_best():
    assert pick_option("Because he could not get back home without being found out.", OPTIONS) == 2


def test_pick_option_gives_none_without_any_overlap_or_on_a_tie():
    assert pick_option("", OPTIONS) is None
    assert pick_option("banana", OPTIONS) is None
    assert pick_option("red", ["red car", "red bus"]) is None


def test_quality_examples_get_option_accuracy_besides_qa_f1():
    meta = {"options": OPTIONS, "gold_index": 2}
    right = score_prediction("quality", "He couldn't have gotten home unseen", [OPTIONS[2]], meta)
    wrong = score_prediction("quality", "The Washington Times published it", [OPTIONS[2]], meta)
    assert right["option_accuracy"] == 1.0 and wrong["option_accuracy"] == 0.0
    assert set(right) == {"qa_precision", "qa_recall", "qa_f1", "option_accuracy"}


def test_rouge_f_measures_match_hand_counts():
    # Unigrams: 3 of 3 predicted found among 6 -> P 1, R 1/2, F 2/3. Bigrams: 2 of 2 among 5 -> F 4/7.
    # LCS "the cat sat" = 3 -> same as ROUGE-1.
    scores = rouge_scores("The cat sat.", ["the cat sat on the mat"])
    assert scores == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})


def test_rouge_takes_each_score_from_its_best_reference():
    scores = rouge_scores("the cat sat", ["dogs bark loudly", "the cat sat on the mat", "the cat sat"])
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_rouge_of_an_empty_prediction_is_zero():
    assert rouge_scores("", ["the cat sat"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_summaries_are_scored_with_rouge_and_qa_tasks_with_f1():
    assert set(score_prediction("qmsum", "a summary", ["the summary"], {})) == {"rouge1", "rouge2", "rougeL"}
    assert set(score_prediction("squad", "Denver", ["Denver"], {})) == {"qa_precision", "qa_recall", "qa_f1"}
    assert primary_metric("govreport") == "rouge_gmean" and primary_metric("babi") == "qa_f1"
    assert primary_metric("quality") == "option_accuracy" and primary_metric("niah") == "needle_recall"


def test_geometric_mean():
    assert geometric_mean([0.5, 0.25, 1.0]) == pytest.approx(0.5)
    assert geometric_mean([0.5, 0.0, 1.0]) == 0.0


def test_aggregate_averages_and_adds_gmean_of_the_mean_rouge_scores():
    summary = aggregate([{"rouge1": 0.6, "rouge2": 0.2, "rougeL": 0.4}, {"rouge1": 0.4, "rouge2": 0.0, "rougeL": 0.2}])
    assert summary["rouge1"] == pytest.approx(0.5) and summary["rouge2"] == pytest.approx(0.1)
    assert summary["rougeL"] == pytest.approx(0.3)
    assert summary["rouge_gmean"] == pytest.approx(math.pow(0.5 * 0.1 * 0.3, 1 / 3))


def test_needle_recall_counts_key_facts_found_as_whole_words():
    assert needle_recall("Eat a sandwich in dolores park.", ["Dolores Park"]) == 1.0
    assert needle_recall("The numbers are 1234567 and 7654321", ["1234567", "7654321", "1111111"]) == 2 / 3
    assert needle_recall("12345678", ["1234567"]) == 0.0
