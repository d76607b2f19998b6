"""Hybrid recall: chunk tokens of the whole text plus the raw text of the chunks most similar to the question."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import assert_same_greedy_answers, greedy
from evaluation.data import Example
from evaluation.hybrid_ranking import family_summaries, needle_ranks, rank_summary, ranking_cosines
from evaluation.niah import needle_example
from modeling_e2llm import ContextCache, E2LLMConfig, E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.embedded_default import default_decoder_path, default_encoder_path
from modeling_e2llm.lora import lora_config
from modeling_e2llm.modeling_e2llm import _pool_windows, window_counts
from modeling_e2llm.processing_e2llm import bm25_scores

SENTENCES = [f"Paragraph {i} talks about topic number {i} in some detail. " for i in range(12)]
TEXT = "".join(SENTENCES)


def test_off_reproduces_plain_e2llm_token_for_token(tiny_model, tiny_paths):
    plain = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64)
    hybrid = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64, hybrid_top_k=3)
    expected = greedy(tiny_model, context=TEXT, prompt="q", processor=plain, max_new_tokens=6)
    switched_off = greedy(tiny_model, context=TEXT, prompt="q", processor=hybrid, hybrid_top_k=0, max_new_tokens=6)
    assert_same_greedy_answers(switched_off, expected)


def test_chunk_equal_to_the_question_is_chosen_first(tiny_model, tiny_processor):
    start, end = tiny_processor.chunk(TEXT)[7]
    passages = tiny_model.hybrid_passages(TEXT, TEXT[start:end], tiny_processor, top_k=1, token_budget=1000)
    assert passages == [(7, TEXT[start:end])]


def test_selection_takes_top_scores_in_document_order_within_budget(tiny_processor):
    offsets = torch.tensor(tiny_processor.chunk(TEXT))
    scores = torch.linspace(0, 1, len(offsets)).flip(0)  # chunk 0 best, then 1, 2, ...
    scores[5] = 2.0  # chunk 5 best of all
    chosen = tiny_processor.select_passages(TEXT, offsets, scores, top_k=3, token_budget=10_000)
    assert [index for index, _ in chosen] == [0, 1, 5]
    assert all(text == TEXT[offsets[i][0]:offsets[i][1]] for i, text in chosen)


def test_budget_is_never_exceeded(tiny_processor):
    offsets = torch.tensor(tiny_processor.chunk(TEXT))
    scores = torch.rand(len(offsets), generator=torch.Generator().manual_seed(0))
    for budget in (1, 10, 25, 60, 200):  # 0 is refused (tests/test_bad_input.py)
        chosen = tiny_processor.select_passages(TEXT, offsets, scores, top_k=100, token_budget=budget)
        lines = [tiny_processor.passage_template.format(index=i + 1, total=len(offsets), text=t) for i, t in chosen]
        cost = sum(len(tiny_processor.tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines)
        assert cost <= budget
        if budget >= 200:
            assert chosen  # a generous budget does take passages


def test_prompt_quotes_the_passages_with_their_positions_after_the_chunk_tokens(tiny_processor):
    prompt = tiny_processor.build_prompt(12, "Which topic?", passages=[(2, "third chunk"), (9, "tenth chunk")])
    after_chunks = prompt.split("<chunk>" * 12, 1)[1]
    assert "[chunk 3 of 12] third chunk\n[chunk 10 of 12] tenth chunk\n" in after_chunks
    assert after_chunks.index("tenth chunk") < after_chunks.index("Answer the question: Which topic?")


def test_cached_and_uncached_hybrid_answers_are_equal(tiny_model, tiny_processor):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    kwargs = dict(prompt="topic number 4", processor=tiny_processor, hybrid_top_k=2, max_new_tokens=6)
    assert_same_greedy_answers(greedy(tiny_model, context_cache=cache, **kwargs),
                               greedy(tiny_model, context=TEXT, **kwargs))


def test_question_less_call_falls_back_to_plain_restatement(tiny_model, tiny_processor):
    kwargs = dict(processor=tiny_processor, max_new_tokens=6, do_sample=False)
    plain = tiny_model.generate(context=TEXT, prompt=None, **kwargs)
    assert tiny_model.generate(context=TEXT, prompt=None, hybrid_top_k=3, **kwargs).tolist() == plain.tolist()


def test_hybrid_settings_are_saved_with_the_processor(tiny_paths, tmp_path):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, hybrid_top_k=4, hybrid_token_budget=512)
    processor.save_pretrained(tmp_path)
    loaded = E2LLMProcessor.from_pretrained(tmp_path)
    assert (loaded.hybrid_top_k, loaded.hybrid_token_budget) == (4, 512)



def test_bm25_puts_the_chunk_with_the_rare_query_token_first_and_ignores_tokens_every_chunk_has():
    chunks = torch.tensor([[5, 6, 7, 0], [5, 8, 7, 9], [5, 6, 6, 0]])  # token 5 in every chunk, 8 in one
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    scores = bm25_scores(chunks, mask, torch.tensor([5, 8]))
    assert scores.argmax() == 1 and scores[0] == scores[2]
    assert bm25_scores(chunks, mask, torch.tensor([5])).max() < scores[1] / 5


def test_fused_ranking_picks_the_chunk_holding_the_asked_name_where_the_dense_score_cannot_tell(tiny_model,
                                                                                              tiny_processor):
    texts = [sentence for sentence in SENTENCES]
    texts[8] = "The lighthouse keeper was Casimir Lindqvist. " + texts[8]
    pooled = torch.ones(len(texts), tiny_model.config.encoder_config.hidden_size)  # every chunk alike to the cosine
    question = "Who was Casimir Lindqvist?"
    fused = tiny_model.chunk_scores(pooled, question, tiny_processor, chunk_texts=texts, ranking="fused")
    dense = tiny_model.chunk_scores(pooled, question, tiny_processor, ranking="dense")
    assert fused.argmax() == 8 and torch.allclose(dense, dense[0].expand(len(texts)))


def test_a_question_of_several_sentences_scores_each_chunk_by_its_best_sentence(tiny_model, tiny_processor):
    texts = [sentence.strip() for sentence in SENTENCES]
    tokens = tiny_processor.encoder_tokenizer(texts, padding="longest", return_tensors="pt")
    pooled = tiny_model.model.pool_chunks(tokens["input_ids"], tokens["attention_mask"], for_scoring=True)
    scores = tiny_model.chunk_scores(pooled, f"{texts[2]} {texts[9]}", tiny_processor, ranking="dense")
    torch.testing.assert_close(scores[[2, 9]], torch.ones(2))
    assert scores.topk(2).indices.sort().values.tolist() == [2, 9]


def test_a_contexts_encoded_chunks_rank_as_its_context_cache_does(tiny_model, tiny_processor):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    for ranking in ("dense", "fused"):
        torch.testing.assert_close(tiny_model.chunk_scores(tiny_processor.encode_chunks([TEXT]), "topic 4",
                                                           tiny_processor, ranking=ranking),
                                   tiny_model.chunk_scores(cache, "topic 4", tiny_processor, ranking=ranking))


def test_pooled_vectors_without_their_texts_are_refused_by_the_fused_ranking(tiny_model, tiny_processor):
    pooled = tiny_model.model.pool_chunks(*_chunk_inputs(tiny_processor), for_scoring=True)
    with pytest.raises(ValueError, match="pass chunk_texts"):
        tiny_model.chunk_scores(pooled, "topic 4", tiny_processor, ranking="fused")


def test_a_checkpoint_saved_before_hybrid_ranking_existed_loads_with_the_fused_ranking(tiny_model, tmp_path):
    tiny_model.config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["hybrid_ranking"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert E2LLMConfig.from_pretrained(tmp_path).hybrid_ranking == "fused"


def _tune_chunk_encoder(model) -> None:
    """What training does to the chunk encoder, in miniature: the weights of the top layers LoRA tunes move."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.model.encoder.encoder.layer[-model.config.encoder_lora_layers:].parameters():
            parameter.add_(3 * parameter.std() * torch.randn(parameter.shape, generator=generator))


def test_composed_model_ranks_with_the_pretrained_encoder_whatever_training_does_to_the_chunk_encoder(
        tiny_model, tiny_processor):
    before = tiny_model.encode_context(TEXT, processor=tiny_processor)
    _tune_chunk_encoder(tiny_model)
    after = tiny_model.encode_context(TEXT, processor=tiny_processor)
    assert not torch.allclose(after.chunk_features, before.chunk_features, atol=1e-3)
    torch.testing.assert_close(tiny_model.chunk_scores(after, "topic number 4", tiny_processor),
                               tiny_model.chunk_scores(before, "topic number 4", tiny_processor))


def test_tuned_scoring_ranks_with_the_chunk_encoder_and_keeps_no_copy(tiny_paths, tiny_processor):
    model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths, hybrid_scoring="tuned",
                                                             hybrid_window_tokens=None).eval()  # whole chunks
    assert model.model.ranking_layers is None
    before = model.encode_context(TEXT, processor=tiny_processor)
    _tune_chunk_encoder(model)
    after = model.encode_context(TEXT, processor=tiny_processor)
    torch.testing.assert_close(model.model.adapter(after.pooled), after.chunk_features)
    assert not torch.allclose(model.chunk_scores(after, "topic number 4", tiny_processor),
                              model.chunk_scores(before, "topic number 4", tiny_processor), atol=1e-3)


def test_a_model_holding_the_copy_can_switch_to_ranking_with_the_chunk_encoder(tiny_model, tiny_processor):
    _tune_chunk_encoder(tiny_model)
    tiny_model.config.hybrid_scoring = "tuned"
    tiny_model.config.hybrid_window_tokens = None  # whole-chunk ranking vectors, comparable with chunk tokens
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    torch.testing.assert_close(tiny_model.model.adapter(cache.pooled), cache.chunk_features)


def test_base_scoring_without_the_pretrained_copy_is_refused_with_the_fix(tiny_paths, tiny_processor):
    model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths, hybrid_scoring="tuned")
    model.config.hybrid_scoring = "base"
    with pytest.raises(ValueError, match='set config.hybrid_scoring="tuned"'):
        model.hybrid_passages(TEXT, "topic 4", tiny_processor, top_k=2)


def test_a_saved_model_keeps_its_ranking_layers(tiny_model, tiny_processor, tmp_path):
    _tune_chunk_encoder(tiny_model)
    tiny_model.save_pretrained(tmp_path)
    loaded = E2LLMForCausalLM.from_pretrained(tmp_path).eval()
    expected = tiny_model.chunk_scores(tiny_model.encode_context(TEXT, processor=tiny_processor), "topic 4",
                                       tiny_processor)
    scores = loaded.chunk_scores(loaded.encode_context(TEXT, processor=tiny_processor), "topic 4", tiny_processor)
    torch.testing.assert_close(scores, expected)


def test_lora_leaves_the_ranking_layers_frozen_and_untouched(tiny_model):
    from peft import get_peft_model

    peft_model = get_peft_model(tiny_model, lora_config(tiny_model.config))
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert any(".encoder." in name and "lora_" in name for name in trainable)
    assert not any("ranking_layers" in name for name, _ in peft_model.named_modules() if "lora_" in name)
    assert not any("ranking_layers" in name for name in trainable)


def test_needle_rank_is_zero_when_the_question_is_the_needle_chunk(tiny_model, tiny_processor, essay_text):
    example = needle_example("number", 400, 50, [essay_text], tiny_processor.tokenizer)
    needle_start = example.meta["needle_starts"][0]
    start, end = next((b, e) for b, e in tiny_processor.chunk(example.context) if b <= needle_start < e)
    asked = replace(example, question=example.context[start:end])
    assert needle_ranks(tiny_model, tiny_processor, asked) == [0]


def test_ranking_with_another_encoder_is_an_argument_not_a_change_to_the_model(tiny_model, tiny_processor):
    _tune_chunk_encoder(tiny_model)
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    tuned = tiny_model.model.pool_chunks(*_chunk_inputs(tiny_processor), for_scoring=True, scoring="tuned")
    torch.testing.assert_close(tiny_model.model.adapter(tuned), cache.chunk_features)  # the chunk encoder's vectors
    tuned_scores = tiny_model.chunk_scores(tuned, "topic 4", tiny_processor, scoring="tuned",
                                           chunk_texts=cache.chunk_texts)
    assert not torch.allclose(tuned_scores, tiny_model.chunk_scores(cache, "topic 4", tiny_processor), atol=1e-3)
    assert tiny_model.config.hybrid_scoring == "base"


def _chunk_inputs(processor) -> tuple[torch.Tensor, torch.Tensor]:
    chunks = processor.encode_chunks([TEXT])
    return chunks["chunk_input_ids"], chunks["chunk_attention_mask"]


def test_rank_summary_counts_cells_whose_needles_are_all_within_k():
    summary = rank_summary([[0], [2], [0, 4], [9]], top_ks=(1, 3, 5))
    assert summary == {"all_needles_in_top_1": 0.25, "all_needles_in_top_3": 0.5, "all_needles_in_top_5": 0.75}


def test_family_summaries_count_each_needle_family_apart(essay_text, tiny_processor):
    examples = [needle_example("pool", 300, 50, [essay_text], tiny_processor.tokenizer, family=family)
                for family in ("code", "code", "date")]
    summary = family_summaries(examples, [[0], [6], [2]])
    assert summary["code"]["all_needles_in_top_5"] == 0.5 and summary["date"]["all_needles_in_top_3"] == 1.0
    assert sorted(summary) == ["code", "date"]


@pytest.mark.parametrize("scoring", ["base", "tuned"])
def test_hybrid_ranking_is_the_same_with_and_without_the_knob(tiny_at, scoring):
    (default, processor), (compressed, compressed_processor) = tiny_at(None), tiny_at(4)
    default.config.hybrid_scoring = compressed.config.hybrid_scoring = scoring
    plain = default.encode_context(TEXT, processor=processor)
    knob = compressed.encode_context(TEXT, processor=compressed_processor)
    # "tuned" ranks with the chunk encoder: its whole-chunk means come from the segment means, not a second pass.
    torch.testing.assert_close(knob.pooled, plain.pooled, atol=1e-5, rtol=1e-5)
    question = "What does paragraph 7 talk about?"
    assert (compressed.hybrid_passages(TEXT, question, compressed_processor, top_k=3)
            == default.hybrid_passages(TEXT, question, processor, top_k=3))


# --- ranking windows: a chunk scores by its best window of token states ------------------------------------------

def test_windows_cover_a_chunk_from_its_start_every_stride_tokens_to_its_end():
    # 16-token windows every 8 tokens: up to 16 tokens one window (of what there is), then one per 8 tokens begun
    assert window_counts(torch.tensor([5, 16, 17, 24, 25, 110]), 16, 8).tolist() == [1, 1, 2, 2, 3, 13]
    states = torch.arange(10.0).reshape(1, 10, 1)  # token i has state i
    mask = torch.tensor([[1] * 7 + [0] * 3])  # 7 real tokens
    windows = _pool_windows(states, mask, 4, 2, int(window_counts(10, 4, 2)))  # (1, 4, 1)
    real = int(window_counts(7, 4, 2))
    assert real == 3 and windows[0, :real, 0].tolist() == [1.5, 3.5, 5.0]  # the last: tokens 4-6, all it has


def test_a_short_sentence_inside_a_long_chunk_wins_with_windows_where_the_whole_chunk_loses(tiny_paths, essay_text):
    """The real all-MiniLM-L6-v2: a needle in a ~100-token chunk of an essay, asked about in other words."""
    model = E2LLMForCausalLM.from_encoder_decoder_pretrained(default_encoder_path(), tiny_paths[1]).eval()
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(default_encoder_path(), default_decoder_path())
    essay = essay_text[:8000]
    cut = essay.index(". ", 4500) + 2
    context = essay[:cut] + "The combination of the safe in the old harbour office is 4417902. " + essay[cut:]
    chunks = processor.encode_chunks([context])
    needle_chunk = next(i for i, (start, end) in enumerate(chunks["offsets"].tolist()) if start <= cut < end)
    ranks = {}
    for window_tokens in (None, 16):
        model.config.hybrid_window_tokens = window_tokens
        scores = model.chunk_scores(chunks, "Which digits open the strongbox at the port office?", processor,
                                    ranking="dense")
        ranks[window_tokens] = scores.argsort(descending=True).tolist().index(needle_chunk)
    assert ranks[None] >= 3 and ranks[16] == 0  # measured: 4th of 17 chunks as a whole, 1st by its best window


def test_a_window_longer_than_every_chunk_ranks_as_the_whole_chunk(tiny_model, tiny_processor):
    tiny_model.config.hybrid_window_tokens = None
    whole = tiny_model.encode_context(TEXT, processor=tiny_processor)
    tiny_model.config.hybrid_window_tokens = tiny_model.config.hybrid_window_stride = 1000
    windowed = tiny_model.encode_context(TEXT, processor=tiny_processor)
    assert windowed.pooled.shape[1] == 1
    torch.testing.assert_close(windowed.pooled[:, 0].float(), whole.pooled, atol=1e-3, rtol=1e-3)  # float16 windows
    for ranking in ("dense", "fused"):
        scores = [tiny_model.chunk_scores(cache, "topic 4", tiny_processor, ranking=ranking) for cache in (windowed, whole)]
        assert scores[0].argsort().tolist() == scores[1].argsort().tolist()


def test_window_settings_round_trip_through_the_saved_model_and_the_cache(tiny_model, tiny_processor, tmp_path):
    tiny_model.config.hybrid_window_tokens, tiny_model.config.hybrid_window_stride = 4, 2
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = E2LLMForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert (loaded.config.hybrid_window_tokens, loaded.config.hybrid_window_stride) == (4, 2)
    cache = loaded.encode_context(TEXT, processor=tiny_processor)
    cache.save(tmp_path / "doc.safetensors")
    reloaded = ContextCache.load(tmp_path / "doc.safetensors")
    assert reloaded.ranking_windows == (4, 2) and reloaded.window_mask.sum(dim=1).min() > 1  # ~12-token chunks
    torch.testing.assert_close(loaded.chunk_scores(reloaded, "topic 4", tiny_processor),
                               loaded.chunk_scores(tiny_processor.encode_chunks([TEXT]), "topic 4", tiny_processor))


def test_a_cache_made_with_other_windows_is_refused_with_the_fix(tiny_model, tiny_processor):
    tiny_model.config.hybrid_window_tokens, tiny_model.config.hybrid_window_stride = 4, 2
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    tiny_model.config.hybrid_window_stride = 4
    with pytest.raises(ValueError, match="hybrid_window_stride=2 but the model by windows of hybrid_window_tokens=4, "
                                         "hybrid_window_stride=4. Re-encode the text"):
        tiny_model.generate(context_cache=cache, prompt="topic 4", processor=tiny_processor, max_new_tokens=2)


def test_a_cache_of_format_2_with_one_vector_per_chunk_still_loads_and_ranks_whole_chunks(tiny_model, tiny_processor,
                                                                                          tmp_path):
    from safetensors.torch import save_file

    from modeling_e2llm.context_cache import content_fingerprint

    tiny_model.config.hybrid_window_tokens = None
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    whole = tiny_model.chunk_scores(cache, "topic 4", tiny_processor)
    tensors = {"chunk_features": cache.chunk_features, "pooled": cache.pooled, "offsets": cache.offsets,
               "text_utf8": torch.frombuffer(bytearray(TEXT.encode("utf-8")), dtype=torch.uint8),
               "chunk_input_ids": cache.chunk_input_ids, "chunk_attention_mask": cache.chunk_attention_mask}
    save_file(tensors, str(tmp_path / "old.safetensors"),
              metadata={"format": "e2llm-context-cache-2", "text_hash": cache.text_hash,
                        "weights_hash": cache.weights_hash, "content_hash": content_fingerprint(tensors)})
    tiny_model.config.hybrid_window_tokens, tiny_model.config.hybrid_window_stride = 4, 2
    old = ContextCache.load(tmp_path / "old.safetensors")
    assert old.pooled.shape == (old.num_chunks, 32) and old.ranking_windows is None
    torch.testing.assert_close(tiny_model.chunk_scores(old, "topic 4", tiny_processor), whole)
    assert tiny_model.generate(context_cache=old, prompt="topic 4", processor=tiny_processor, max_new_tokens=2,
                               hybrid_top_k=2).shape == (1, 2)


def test_a_cls_pooled_encoder_ranks_by_its_one_cls_vector_per_chunk(tmp_path, tiny_paths, tiny_processor):
    from conftest import build_tiny_encoder

    encoder = build_tiny_encoder(tmp_path / "cls_encoder", pooling="cls")
    model = E2LLMForCausalLM.from_encoder_decoder_pretrained(str(encoder), tiny_paths[1]).eval()
    model.config.hybrid_window_tokens, model.config.hybrid_window_stride = 4, 2  # windows of [CLS]: none exist
    cache = model.encode_context(TEXT, processor=tiny_processor)
    assert cache.pooled.shape == (cache.num_chunks, 32) and cache.window_mask is None and cache.ranking_windows is None


@pytest.mark.parametrize("windows, message", [((0, 1), "hybrid_window_tokens must be None"),
                                              ((16, 32), "hybrid_window_stride must be an integer from 1 to"),
                                              ((16, None), "hybrid_window_stride must be an integer from 1 to")])
def test_a_bad_window_setting_is_refused_naming_the_fix(tiny_model, windows, message):
    with pytest.raises(ValueError, match=message):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    hybrid_window_tokens=windows[0], hybrid_window_stride=windows[1])


def test_the_int8_report_compares_every_real_ranking_window_of_every_chunk(tiny_model, tiny_processor, essay_text):
    context = essay_text[:3000]
    example = Example(id="cell", context=context, question="q", answer="", answers=[""], task="niah")
    lengths = tiny_processor.encode_chunks([context])["chunk_attention_mask"].sum(dim=1)  # (n_chunks,)
    windows = window_counts(lengths, *tiny_model.model.ranking_windows())  # (n_chunks,)
    cosines = ranking_cosines(tiny_model, tiny_model, tiny_processor, example)  # the same model twice: all 1
    assert windows.sum() > len(windows) and cosines.shape == (int(windows.sum()),)
    torch.testing.assert_close(cosines, torch.ones_like(cosines))
