"""The processor: one placeholder per chunk, offsets, encoder limits, labels, batching and clear errors."""

import pytest
import torch

from modeling_e2llm import E2LLMProcessor

TEXT = ("The committee met on Tuesday. Alice chaired the meeting and opened with the budget. "
        "Bob presented the new design for the remote control.\nCarol asked about the cost. ") * 6


def test_prompt_holds_one_placeholder_per_chunk(tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired the meeting?")
    spans = tiny_processor.chunk(TEXT)
    assert batch["chunk_input_ids"].shape[0] == len(spans) > 1
    assert int((batch["input_ids"] == tiny_processor.chunk_token_id).sum()) == len(spans)


def test_chunk_rows_are_the_encoder_tokens_of_each_span(tiny_processor):
    batch = tiny_processor(TEXT, "q")
    for row, mask, (start, end) in zip(batch["chunk_input_ids"], batch["chunk_attention_mask"], tiny_processor.chunk(TEXT)):
        expected = tiny_processor.encoder_tokenizer(TEXT[start:end])["input_ids"]
        assert row[mask.bool()].tolist() == expected


def test_without_tensors_chunks_and_prompts_come_unpadded_as_the_padded_rows_hold_them(tiny_processor):
    rows = tiny_processor.encode_chunks([TEXT, TEXT[:300]], return_tensors=None)
    padded = tiny_processor.encode_chunks([TEXT, TEXT[:300]])
    assert rows["chunk_input_ids"] == [row[mask.bool()].tolist() for row, mask
                                       in zip(padded["chunk_input_ids"], padded["chunk_attention_mask"])]
    assert rows["chunk_attention_mask"] == [[1] * len(ids) for ids in rows["chunk_input_ids"]]
    assert torch.equal(tiny_processor.pad_chunks(rows)["offsets"], padded["offsets"])
    prompts = tiny_processor.encode_prompts(rows["num_chunks"], "q", "a", return_tensors=None)
    padded_prompts = tiny_processor.encode_prompts(rows["num_chunks"], "q", "a", padding_side="right")
    assert prompts["labels"] == [row[mask.bool()].tolist() for row, mask
                                 in zip(padded_prompts["labels"], padded_prompts["attention_mask"])]
    assert len(prompts["input_ids"][0]) > len(prompts["input_ids"][1])


def test_prompt_follows_the_paper_template_inside_the_chat_template(tiny_processor):
    text = tiny_processor.build_prompt(2, "Who chaired the meeting?")
    assert "Given the contexts: <chunk><chunk>\nPlease follow the instruction:\nAnswer the question: Who chaired" in text
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "Restate the aforementioned context" in tiny_processor.build_prompt(2, None)


def test_chunks_too_long_for_the_encoder_are_split_again(tiny_paths):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=512, max_chunk_tokens=40)
    digits = " ".join(str(n) for n in range(1000, 1200))  # about 3 tokens per number
    spans = processor.chunk(digits)
    lengths = [len(processor.encoder_tokenizer(digits[s:e])["input_ids"]) for s, e in spans]
    assert max(lengths) <= 40
    assert "".join(digits[s:e] for s, e in spans) == digits


def test_target_is_labelled_and_everything_else_masked(tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?", target="Alice chaired it.")
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    target = tiny_processor.tokenizer("Alice chaired it.", add_special_tokens=False)["input_ids"]
    target += [tiny_processor.tokenizer.eos_token_id]
    assert labels[-len(target):].tolist() == target == ids[-len(target):].tolist()
    assert (labels[:-len(target)] == -100).all()


def test_batch_is_left_padded_and_each_row_equals_its_single_encoding(tiny_processor):
    contexts, prompts = [TEXT, "A short note. It has two sentences."], ["Who chaired?", "How many sentences?"]
    batch = tiny_processor(contexts, prompts)
    singles = [tiny_processor(c, p) for c, p in zip(contexts, prompts)]
    for row, mask, single in zip(batch["input_ids"], batch["attention_mask"], singles):
        assert row[mask.bool()].tolist() == single["input_ids"][0].tolist()
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert batch["chunk_input_ids"].shape[0] == sum(s["chunk_input_ids"].shape[0] for s in singles)


def test_settings_survive_save_and_load(tiny_paths, tmp_path):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(
        *tiny_paths, chunk_size=300, chunk_overlap=0.3, reasoning_template="Context: {context}\nQ: {query}")
    processor.save_pretrained(tmp_path)
    loaded = E2LLMProcessor.from_pretrained(tmp_path)
    assert (loaded.chunk_size, loaded.chunk_overlap) == (300, 0.3)
    assert loaded.reasoning_template == "Context: {context}\nQ: {query}"
    assert loaded.chunk_token_id == processor.chunk_token_id
    assert loaded.chunk(TEXT) == processor.chunk(TEXT)


@pytest.mark.parametrize("context", ["", "   \n\t "])
def test_empty_context_is_refused(tiny_processor, context):
    with pytest.raises(ValueError, match="context is empty"):
        tiny_processor(context, "q")


@pytest.mark.parametrize("context", [None, 42, [b"bytes"]])
def test_non_string_context_is_refused(tiny_processor, context):
    with pytest.raises(TypeError, match="context must be a string"):
        tiny_processor(context, "q")


def test_prompt_containing_the_placeholder_is_refused(tiny_processor):
    with pytest.raises(ValueError, match="placeholder"):
        tiny_processor(TEXT, "What does <chunk> mean?")


def test_prompt_list_of_wrong_length_is_refused(tiny_processor):
    with pytest.raises(ValueError, match="one entry per context"):
        tiny_processor([TEXT, TEXT], ["only one"])


def test_missing_processor_files_give_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="processor.save_pretrained"):
        E2LLMProcessor.from_pretrained(tmp_path)


def test_template_without_fields_is_refused(tiny_paths):
    with pytest.raises(ValueError, match="{query}"):
        E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, reasoning_template="Context: {context}")


@pytest.mark.parametrize("k, chunk_size", [(4, 64), (16, 256)])
def test_with_the_knob_each_chunk_gets_ceil_of_its_encoder_tokens_over_k_placeholders(tiny_paths, k, chunk_size):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=chunk_size,
                                                               encoder_tokens_per_chunk_token=k)
    batch = processor([TEXT, "A short note."], ["Who chaired the meeting?", "What?"])
    lengths = batch["chunk_attention_mask"].sum(dim=1).tolist()
    chunks = len(processor.chunk(TEXT))
    wanted = [sum(-(-n // k) for n in lengths[:chunks]), sum(-(-n // k) for n in lengths[chunks:])]
    assert (batch["input_ids"] == processor.chunk_token_id).sum(dim=1).tolist() == wanted
    assert wanted[0] > chunks  # several chunk tokens per chunk
    assert processor.encode_chunks([TEXT])["num_chunk_tokens"] == wanted[:1]


def test_the_knob_survives_save_and_load(tiny_paths, tmp_path):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, encoder_tokens_per_chunk_token=8)
    processor.save_pretrained(tmp_path)
    assert E2LLMProcessor.from_pretrained(tmp_path).encoder_tokens_per_chunk_token == 8


@pytest.mark.parametrize("value", [0, 1.5, "8"])
def test_a_knob_that_is_not_a_positive_integer_is_refused_on_construction_and_assignment(tiny_processor, tiny_paths,
                                                                                         value):
    with pytest.raises(ValueError, match="encoder_tokens_per_chunk_token must be None"):
        E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, encoder_tokens_per_chunk_token=value)
    with pytest.raises(ValueError, match="encoder_tokens_per_chunk_token must be None"):
        tiny_processor.encoder_tokens_per_chunk_token = value


def test_passage_labels_count_chunks_while_placeholders_count_chunk_tokens(tiny_processor):
    batch = tiny_processor.encode_prompts([3], "Who?", passages=[[(1, "Alice chaired.")]], num_chunk_tokens=[11])
    assert int((batch["input_ids"] == tiny_processor.chunk_token_id).sum()) == 11
    assert "[chunk 2 of 3] Alice chaired." in tiny_processor.decode(batch["input_ids"][0])
