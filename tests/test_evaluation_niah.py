"""Needle in a haystack: needles land at the asked depth on a sentence boundary, haystacks have the asked
length in decoder tokens, and the heatmap is drawn."""

import re

import pytest

from evaluation.data import Example
from evaluation.niah import (draw_heatmap, haystack_prefix, hide_example_in_haystack, load_haystack_essays,
                             needle_example, needle_grid, save_heatmap)
from evaluation.niah import grid_results
from modeling_e2llm.haystacks import (CLASSIC_NEEDLE, EVALUATION_NEEDLES, NEEDLE_FAMILIES, TRAINING_NEEDLES,
                                      insert_at_depths, sentence_starts)

SENTENCE_BOUNDARY = re.compile(r"([.!?][\"'\u201d\u2019)\]]*\s+|\n\s*)$")


@pytest.fixture(scope="module")
def essays() -> list[str]:
    return load_haystack_essays()


def assert_on_sentence_boundary(text: str, start: int) -> None:
    before = text[:start]
    assert start == 0 or SENTENCE_BOUNDARY.search(before) or SENTENCE_BOUNDARY.search(before[:-1]), before[-40:]


@pytest.mark.parametrize("depth", [0, 10, 25, 50, 75, 90, 100])
def test_needle_lands_at_the_requested_depth_on_a_sentence_boundary(essay_text, depth):
    needle = CLASSIC_NEEDLE.sentence
    context, [start] = insert_at_depths(essay_text, [needle], [depth])
    assert context[start:start + len(needle)] == needle
    assert context.count(needle) == 1
    assert abs(start / len(essay_text) - depth / 100) < 0.01  # sentences are ~100 of ~75k characters
    assert_on_sentence_boundary(context, start)
    # Nothing of the haystack is lost or reordered (insertion adds at most a separating space).
    without_needle = context[:start] + context[start + len(needle):]
    assert without_needle.split() == essay_text.split()


def test_sentence_starts_are_after_sentence_ends_and_line_breaks():
    text = "One. Two! \"Three?\" Four\nFive 3.14 e.g.x"
    assert sentence_starts(text) == [0, 5, 10, 19, 24, len(text)]


def test_several_needles_keep_their_order_and_depths(essay_text):
    needles = ["Needle one is here.", "Needle two is here.", "Needle three is here."]
    context, starts = insert_at_depths(essay_text, needles, [20, 50, 50])
    assert starts == sorted(starts) and [context.find(n) for n in needles] == starts
    assert abs(starts[0] / len(context) - 0.2) < 0.01


def test_depth_outside_0_to_100_is_refused(essay_text):
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        insert_at_depths(essay_text, ["x."], [120])


def test_haystack_has_the_requested_number_of_decoder_tokens(essays, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    for num_tokens in (500, 80_000):  # 80k tokens needs the ~75k-token essays repeated
        text = haystack_prefix(essays, tokenizer, num_tokens)
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == pytest.approx(num_tokens, abs=2)
    assert text.startswith(essays[0][:1000])


@pytest.mark.parametrize("variant, facts", [("sentence", 1), ("number", 1), ("multi", 3)])
def test_grid_cell_holds_its_needles_at_the_depth_in_a_context_of_the_length(essays, tiny_processor, variant, facts):
    example = needle_example(variant, 2000, 50, essays, tiny_processor.tokenizer)
    tokens = len(tiny_processor.tokenizer(example.context, add_special_tokens=False)["input_ids"])
    assert tokens == pytest.approx(2000, abs=5)
    assert len(example.meta["key_facts"]) == facts
    for needle, fact, start in zip(example.answers, example.meta["key_facts"], example.meta["needle_starts"]):
        assert fact in needle and example.context[start:].startswith(needle)
        assert_on_sentence_boundary(example.context, start)
    assert abs(example.meta["needle_starts"][0] / len(example.context) - 0.5) < 0.02
    if variant != "sentence":
        assert all(re.fullmatch(r"\d{7}", fact) for fact in example.meta["key_facts"])


def test_pool_cell_hides_an_evaluation_template_of_its_family_and_asks_in_other_words(essays, tiny_processor):
    example = needle_example("pool", 2000, 50, essays, tiny_processor.tokenizer, family="place")
    [item] = example.meta["key_facts"]
    [template] = [t for t in EVALUATION_NEEDLES if t.sentence.format(item=item) == example.answer]
    assert template.family == "place" and example.question == template.question
    assert example.context[example.meta["needle_starts"][0]:].startswith(example.answer)
    assert item not in example.question


def test_pool_multi_cell_asks_for_three_needles_of_different_families_at_once(essays, tiny_processor):
    example = needle_example("pool-multi", 2000, 10, essays, tiny_processor.tokenizer)
    templates = [t for sentence in example.answers for t in EVALUATION_NEEDLES
                 if any(sentence == t.sentence.format(item=item) for item in example.meta["key_facts"])]
    assert len({t.family for t in templates}) == 3
    assert all(t.question in example.question for t in templates)
    assert example.meta["needle_depths"] == [10, 40, 70]


def test_pool_grid_repeats_the_grid_for_every_needle_family(essays, tiny_processor):
    grid = needle_grid("pool", [300], [0, 100], essays, tiny_processor.tokenizer)
    assert [e.meta["family"] for e in grid] == [family for family in NEEDLE_FAMILIES for _ in (0, 100)]
    assert len({e.id for e in grid}) == 2 * len(NEEDLE_FAMILIES)


def test_results_give_the_mean_needle_recall_of_each_family(essays, tiny_processor):
    grid = needle_grid("pool", [300], [0, 100], essays, tiny_processor.tokenizer)
    records = {e.id: {"scores": {"needle_recall": float(e.meta["family"] == "code" or e.meta["depth"] == 0)}}
               for e in grid}
    results = grid_results(grid, records, {})
    assert results["per_family"] == {family: 1.0 if family == "code" else 0.5 for family in NEEDLE_FAMILIES}
    assert results["mean_score"] == pytest.approx(0.6)


def test_evaluation_and_training_pools_share_no_sentence_or_question():
    assert len({t.family for t in EVALUATION_NEEDLES}) >= 4
    assert {t.family for t in TRAINING_NEEDLES} == {t.family for t in EVALUATION_NEEDLES}
    assert not {t.sentence for t in EVALUATION_NEEDLES} & {t.sentence for t in TRAINING_NEEDLES}
    assert not {t.question for t in EVALUATION_NEEDLES} & {t.question for t in TRAINING_NEEDLES}


def test_multi_needles_spread_evenly_after_the_depth(essays, tiny_processor):
    example = needle_example("multi", 1000, 40, essays, tiny_processor.tokenizer)
    assert example.meta["needle_depths"] == [40, 60, 80]


def test_grid_is_lengths_times_depths_with_reproducible_numbers(essays, tiny_processor):
    grid = needle_grid("number", [300, 600], [0, 100], essays, tiny_processor.tokenizer)
    again = needle_grid("number", [300, 600], [0, 100], essays, tiny_processor.tokenizer)
    assert [(e.meta["length"], e.meta["depth"]) for e in grid] == [(300, 0), (300, 100), (600, 0), (600, 100)]
    assert [e.meta["key_facts"] for e in grid] == [e.meta["key_facts"] for e in again]
    assert len({e.id for e in grid}) == 4


def test_hide_example_in_haystack_scatters_the_context_lines_in_order(essays, tiny_processor):
    facts = ["Mary moved to the bathroom.", "John went to the hallway.", "Mary travelled to the office."]
    example = Example(id="babi1", context="\n".join(facts), question="Where is Mary?", answer="office",
                      answers=["office"], task="babi", meta={"babi_task": "qa1"})
    hidden = hide_example_in_haystack(example, essays, tiny_processor.tokenizer, 1500)
    positions = [hidden.context.find(fact) for fact in facts]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert len(tiny_processor.tokenizer(hidden.context)["input_ids"]) == pytest.approx(1500, abs=5)
    assert hidden.meta["babi_task"] == "qa1" and hidden.question == example.question
    with pytest.raises(ValueError, match="larger --haystack-tokens"):
        hide_example_in_haystack(example, essays, tiny_processor.tokenizer, 10)


def test_heatmap_puts_depth_on_y_and_length_on_x_and_marks_skipped_cells(tmp_path):
    cells = [{"length": length, "depth": depth, "score": None if length == 8000 and depth == 0 else depth / 100}
             for length in (4000, 8000) for depth in (0, 50, 100)]
    results = {"system": "full", "variant": "sentence", "model": "tiny", "lengths": [4000, 8000],
               "depths": [0, 50, 100], "cells": cells}
    save_heatmap(results, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    image = draw_heatmap(ax, results)
    matrix = image.get_array()
    assert matrix.shape == (3, 2) and matrix[2, 1] == 1.0 and bool(matrix.mask[0, 1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4K", "8K"]
    assert "n/a" in [t.get_text() for t in ax.texts]
