"""The chunker: lossless, bounded, cut at natural boundaries, with exact offsets and overlap."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_e2llm import split_into_chunks
from modeling_e2llm.processing_e2llm import split_sentences

texts = st.text(alphabet=st.sampled_from(list("ab xyz.!?\n。！？42")), min_size=1, max_size=600)
sizes = st.integers(min_value=1, max_value=80)


@given(text=texts, chunk_size=sizes)
def test_chunks_without_overlap_concatenate_to_the_exact_input(text, chunk_size):
    spans = split_into_chunks(text, chunk_size)
    assert "".join(text[s:e] for s, e in spans) == text


@given(text=texts, chunk_size=sizes)
def test_spans_are_contiguous_nonempty_and_within_chunk_size(text, chunk_size):
    spans = split_into_chunks(text, chunk_size)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start == end
    assert all(0 < e - s <= chunk_size for s, e in spans)


@settings(max_examples=200)
@given(text=texts, chunk_size=st.integers(min_value=10, max_value=80), fraction=st.sampled_from([0.1, 0.3, 0.5]))
def test_overlap_starts_each_chunk_the_overlap_before_the_previous_end(text, chunk_size, fraction):
    overlap = int(chunk_size * fraction)
    spans = split_into_chunks(text, chunk_size, overlap)
    assert spans[-1][1] == len(text)
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start == max(end - overlap, start + 1)  # overlap, yet always moving forward
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert covered == set(range(len(text)))


def test_cut_goes_back_to_the_last_sentence_end_inside_the_chunk():
    text = "One two. Three four! Five six seven eight nine"
    assert split_into_chunks(text, 30)[0] == (0, len("One two. Three four!"))


def test_line_break_counts_as_a_boundary():
    text = "speaker A: hello there\nspeaker B: good morning to you all"
    assert split_into_chunks(text, 30)[0] == (0, len("speaker A: hello there\n"))


def test_cjk_sentence_marks_cut_without_following_space():
    text = "今天天气很好。我们去公园散步吧！然后回家吃饭"
    assert split_into_chunks(text, 10)[0] == (0, len("今天天气很好。"))


def test_decimal_point_is_not_a_sentence_end():
    text = "Pi is 3.14159 and e is 2.71828 roughly"
    first = split_into_chunks(text, 20)[0]
    assert text[first[0]:first[1]] == "Pi is 3.14159 and e "  # the last white space, not "3."


def test_falls_back_to_white_space_then_hard_cut():
    assert split_into_chunks("aaaa bbbb cccc", 7)[0] == (0, 5)
    assert split_into_chunks("abcdefghijkl", 5) == [(0, 5), (5, 10), (10, 12)]


@pytest.mark.parametrize("size, overlap, word", [(0, 0, "chunk_size"), (10, 10, "overlap"), (10, -1, "overlap")])
def test_invalid_sizes_are_refused_with_the_reason(size, overlap, word):
    with pytest.raises(ValueError, match=word):
        split_into_chunks("text", size, overlap)


def test_sentences_split_where_the_chunker_cuts():
    assert split_sentences("Who won? Where was it.\nWhen 3.14 hit zero。然后") == [
        "Who won?", "Where was it.", "When 3.14 hit zero。", "然后"]
