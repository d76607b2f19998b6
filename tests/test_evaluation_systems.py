"""The four systems on the tiny models: same decoder, same prompt; what each one lets the decoder read."""

import pytest
import torch

from evaluation.data import Example
from evaluation.systems import (PLAIN_PROMPT, DoesNotFit, E2LLMSystem, FullSystem, RAGSystem, TruncationSystem,
                                build_system, default_max_new_tokens, keep_head_and_tail)

NEW_TOKENS = 4


def example(context: str, question: str = "What is the essay about?", task: str = "squad") -> Example:
    return Example(id="e1", context=context, question=question, answer="startups", answers=["startups"],
                   task=task, meta={})


def test_keep_head_and_tail_cuts_the_middle():
    assert keep_head_and_tail(list(range(10)), 4) == [0, 1, 8, 9]
    assert keep_head_and_tail(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert keep_head_and_tail(list(range(3)), 5) == [0, 1, 2]


def test_baseline_prompt_is_the_plain_prompt_in_the_chat_template(tiny_model, tiny_processor):
    system = FullSystem(tiny_model, tiny_processor, NEW_TOKENS)
    ids = system.prompt_ids("Bob likes tea.", "What does Bob like?", truncate=False, max_new_tokens=NEW_TOKENS)
    expected = tiny_processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": PLAIN_PROMPT.format(text="Bob likes tea.", query="What does Bob like?")}],
        tokenize=False, add_generation_prompt=True)
    assert tiny_processor.tokenizer.decode(ids) == expected


def test_e2llm_answers_like_the_model_with_greedy_decoding(tiny_model, tiny_processor, essay_text):
    context = essay_text[:3000]
    predicted = E2LLMSystem(tiny_model, tiny_processor, NEW_TOKENS).predict(example(context))
    expected = tiny_model.answer(context, "What is the essay about?", processor=tiny_processor,
                                 max_new_tokens=NEW_TOKENS, do_sample=False)
    assert isinstance(predicted, str) and predicted == expected


def test_full_reads_the_whole_context_and_matches_truncation_when_it_fits(tiny_model, tiny_processor, essay_text):
    context = essay_text[:2000]
    full = FullSystem(tiny_model, tiny_processor, NEW_TOKENS)
    truncation = TruncationSystem(tiny_model, tiny_processor, NEW_TOKENS)
    ids = full.prompt_ids(context, "Why?", truncate=False, max_new_tokens=NEW_TOKENS)
    assert context in tiny_processor.tokenizer.decode(ids)
    assert full.predict(example(context)) == truncation.predict(example(context))


def test_full_refuses_a_context_longer_than_the_window(tiny_model, tiny_processor, essay_text):
    with pytest.raises(DoesNotFit, match="exceed the decoder window of 2048"):
        FullSystem(tiny_model, tiny_processor, NEW_TOKENS).predict(example(essay_text[:20_000]))


def test_truncation_keeps_head_and_tail_tokens_filling_the_window(tiny_model, tiny_processor, essay_text):
    system = TruncationSystem(tiny_model, tiny_processor, NEW_TOKENS)
    context = essay_text[:20_000]  # ~4.5k tokens, the tiny decoder's window is 2048
    ids = system.prompt_ids(context, "Why?", truncate=True, max_new_tokens=NEW_TOKENS)
    head, tail = system.prompt_parts("Why?")
    context_ids = tiny_processor.tokenizer(context, add_special_tokens=False)["input_ids"]
    kept = ids[len(head):len(ids) - len(tail)]
    assert len(ids) + NEW_TOKENS == 2048
    assert kept[:10] == context_ids[:10] and kept[-10:] == context_ids[-10:]
    assert len(kept) < len(context_ids)
    assert isinstance(system.predict(example(context)), str)


def test_rag_retrieves_the_chunk_the_query_repeats(tiny_model, tiny_processor, essay_text):
    system = RAGSystem(tiny_model, tiny_processor, NEW_TOKENS, top_k=1)
    context = essay_text[:3000]
    spans = tiny_processor.chunk(context)
    assert system.retrieve(context, context[slice(*spans[7])]) == [spans[7]]


def test_rag_keeps_top_k_chunks_in_document_order(tiny_model, tiny_processor, essay_text):
    system = RAGSystem(tiny_model, tiny_processor, NEW_TOKENS, top_k=5)
    context = essay_text[:5000]
    retrieved = system.retrieve(context, "What should founders do?")
    assert len(retrieved) == 5 and retrieved == sorted(retrieved)
    assert set(retrieved) <= set(tiny_processor.chunk(context))
    assert isinstance(system.predict(example(context)), str)


def test_rag_keeps_every_chunk_when_there_are_at_most_top_k(tiny_model, tiny_processor):
    system = RAGSystem(tiny_model, tiny_processor, NEW_TOKENS, top_k=40)
    assert system.retrieve("Bob likes tea. Alice likes coffee.", "tea") == [(0, 34)]


def test_rag_ranks_like_hybrid_recall_and_ignores_what_training_does_to_the_chunk_encoder(tiny_model, tiny_processor,
                                                                                         essay_text):
    system, context, question = RAGSystem(tiny_model, tiny_processor, NEW_TOKENS, top_k=3), essay_text[:3000], "Why?"
    retrieved = system.retrieve(context, question)
    cache = tiny_model.encode_context(context, tiny_processor)
    best = sorted(tiny_model.chunk_scores(cache, question, tiny_processor).topk(3).indices.tolist())
    assert retrieved == [tuple(cache.offsets[index].tolist()) for index in best]
    with torch.no_grad():  # training tunes the top encoder layers (LoRA), never the shared lower ones
        tiny_model.model.encoder.encoder.layer[-1].output.dense.weight.mul_(2.0)
    assert system.retrieve(context, question) == retrieved


def test_default_answer_length_follows_the_task():
    assert default_max_new_tokens("qmsum") > default_max_new_tokens("quality") > default_max_new_tokens("niah")


def test_build_system_names_the_choices(tiny_model, tiny_processor):
    assert isinstance(build_system("rag", tiny_model, tiny_processor, top_k=3), RAGSystem)
    with pytest.raises(ValueError, match="choose one of"):
        build_system("bm25", tiny_model, tiny_processor)


def test_e2llm_skips_an_example_over_the_window(tiny_model, tiny_processor):
    example = Example(id="long", context="This sentence is filler. " * 6000, question="q", answer="a",
                      answers=["a"], task="squad", meta={})
    encoder_calls = []
    tiny_model.model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    with pytest.raises(DoesNotFit, match="new tokens but the decoder's window is 2048 tokens"):
        E2LLMSystem(tiny_model, tiny_processor, max_new_tokens=4).predict(example)
    assert not encoder_calls  # refused before any chunk was encoded
