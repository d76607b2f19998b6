"""Context cache: encode once, ask many questions; stale caches are refused; encoding memory is bounded."""

import json

import pytest
import torch

from conftest import assert_same_greedy_answers, greedy
from modeling_e2llm import ContextCache

TEXT = ("The committee met on Tuesday. Alice chaired the meeting and opened with the budget. "
        "Bob presented the new design for the remote control.\nCarol asked about the cost. ") * 4


def test_cached_generation_equals_uncached(tiny_model, tiny_processor, tmp_path):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    cache.save(tmp_path / "doc.safetensors")
    loaded = ContextCache.load(tmp_path / "doc.safetensors")
    for question in ("Who chaired?", "What did Bob present?"):
        settings = dict(prompt=question, processor=tiny_processor, max_new_tokens=6)
        assert_same_greedy_answers(greedy(tiny_model, context_cache=loaded, **settings),
                                   greedy(tiny_model, context=TEXT, **settings))


def test_cache_holds_chunk_tokens_pooled_vectors_and_offsets(tiny_model, tiny_processor):
    tiny_model.config.hybrid_window_tokens = None  # one ranking vector per chunk, comparable with its chunk token
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    spans = tiny_processor.chunk(TEXT)
    assert cache.offsets.tolist() == [list(span) for span in spans]
    assert cache.chunk_features.shape == (len(spans), 48) and cache.pooled.shape == (len(spans), 32)
    torch.testing.assert_close(tiny_model.model.adapter(cache.pooled), cache.chunk_features)


def test_cache_from_other_weights_is_refused(tiny_model, tiny_processor):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    with torch.no_grad():
        tiny_model.model.adapter.layers[0].bias.add_(0.01)
    with pytest.raises(ValueError, match="other encoder or adapter weights"):
        tiny_model.generate(context_cache=cache, prompt="q", processor=tiny_processor, max_new_tokens=2)


def test_cache_for_other_text_is_refused(tiny_model, tiny_processor):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    with pytest.raises(ValueError, match="another text"):
        tiny_model.generate(context=TEXT + " One more sentence.", context_cache=cache, prompt="q",
                            processor=tiny_processor, max_new_tokens=2)


def test_a_file_that_is_not_a_cache_is_refused(tiny_model, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an E2LLM context cache"):
        ContextCache.load(tmp_path / "other.safetensors")


def test_encoding_memory_does_not_grow_with_document_length(tiny_paths, tmp_path):
    """Peak RSS while encoding 2,000 chunks exceeds that of 200 chunks by little more than their vectors."""
    from conftest import run_isolated

    stdout = run_isolated(f"""
import json, resource, torch
torch.set_num_threads(1)
from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*{list(tiny_paths)!r}, encoder_batch_size=16).eval()
processor = E2LLMProcessor.from_encoder_decoder_pretrained(*{list(tiny_paths)!r}, chunk_size=256)
sentence = "Words of an ordinary sentence repeat here to fill the document. "
peaks = []
for repeats in (800, 8000):  # about 200 and 2,000 chunks of 256 characters
    model.encode_context(sentence * repeats, processor=processor)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(peaks))
""", cwd=tmp_path, bare=False)
    short, long = json.loads(stdout.strip().splitlines()[-1])
    # Unbatched, 2,000 chunks x 64 tokens of attention and MLP activations would add over 100 MB.
    assert long - short < 40, (short, long)


def test_with_the_knob_a_cache_holds_the_chunk_tokens_and_the_ranking_windows_of_each_chunk(tiny_at, tmp_path):
    model, processor = tiny_at(4)
    cache = model.encode_context(TEXT, processor=processor)
    cache.save(tmp_path / "doc.safetensors")
    loaded = ContextCache.load(tmp_path / "doc.safetensors")
    chunks = processor.encode_chunks([TEXT])
    assert (loaded.num_chunks, loaded.num_chunk_tokens) == (chunks["num_chunks"][0], chunks["num_chunk_tokens"][0])
    assert loaded.pooled.shape == (loaded.num_chunks, loaded.window_mask.shape[1], 32)
    assert loaded.window_mask.sum(dim=1).min() >= 1 and loaded.encoder_tokens_per_chunk_token == 4
    for question in ("Who chaired?", "What did Bob present?"):
        uncached = model.generate(context=TEXT, prompt=question, processor=processor, max_new_tokens=6,
                                  do_sample=False, hybrid_top_k=2)
        cached = model.generate(context_cache=loaded, prompt=question, processor=processor, max_new_tokens=6,
                                do_sample=False, hybrid_top_k=2)
        assert cached.tolist() == uncached.tolist()


def test_a_cache_made_with_another_knob_setting_is_refused(tiny_at, tmp_path):
    (compressed, processor), (default, default_processor) = tiny_at(4), tiny_at(None)  # the same weights
    cache = compressed.encode_context(TEXT, processor=processor)
    with pytest.raises(ValueError, match="made with encoder_tokens_per_chunk_token=4 but the model uses None"):
        default.generate(context_cache=cache, prompt="q", processor=default_processor, max_new_tokens=2)


def test_a_cache_saved_without_the_knob_setting_loads_as_one_chunk_token_per_chunk(tiny_model, tiny_processor,
                                                                                  tmp_path):
    from safetensors import safe_open

    tiny_model.encode_context(TEXT, processor=tiny_processor).save(tmp_path / "doc.safetensors")
    with safe_open(str(tmp_path / "doc.safetensors"), framework="pt") as f:
        assert "encoder_tokens_per_chunk_token" not in f.metadata()  # as in caches saved before the knob
    loaded = ContextCache.load(tmp_path / "doc.safetensors")
    assert loaded.encoder_tokens_per_chunk_token is None and loaded.num_chunk_tokens == loaded.num_chunks


OTHER_TEXT = ("The harbour froze in January. Dmitri sold the boat to a fisherman from Oslo. "
              "Nobody saw the lighthouse keeper again.\nThe ice melted in April. ") * 4
QUESTIONS = ("Who chaired?", "What did Bob present to the committee on Tuesday?")


def _decoder_tokens(model) -> tuple[list[int], object]:
    """A list that records the length of every decoder forward's input, and the hook's handle."""
    lengths = []

    def record(module, args, kwargs):
        lengths.append(kwargs["inputs_embeds"].shape[1])
    return lengths, model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("hybrid_top_k", [0, 2])
def test_prefix_reuse_gives_the_uncached_greedy_tokens(tiny_model, tiny_processor, hybrid_top_k):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    settings = dict(processor=tiny_processor, max_new_tokens=8, hybrid_top_k=hybrid_top_k)
    for question in QUESTIONS:
        assert_same_greedy_answers(greedy(tiny_model, context_cache=cache, prompt=question, **settings),
                                   greedy(tiny_model, context=TEXT, prompt=question, **settings))
    assert cache.prefix_kv is not None  # the answers above came from the reused prefix


@pytest.mark.parametrize("hybrid_top_k", [0, 2])
def test_a_batch_from_caches_gives_the_uncached_greedy_tokens(tiny_model, tiny_processor, hybrid_top_k):
    """Same-length prefixes (one cache twice, or two documents of 13 chunks; questions of different lengths pad
    the rows) continue one decoder cache; prefixes of different lengths (13 and 7 chunks) take the plain path."""
    settings = dict(processor=tiny_processor, max_new_tokens=8, hybrid_top_k=hybrid_top_k)
    short = TEXT[:len(TEXT) // 2]
    caches = {text: tiny_model.encode_context(text, processor=tiny_processor) for text in (TEXT, OTHER_TEXT, short)}
    assert [caches[text].num_chunks for text in (TEXT, OTHER_TEXT, short)] == [13, 13, 7]
    for texts in ([TEXT, TEXT], [TEXT, OTHER_TEXT], [TEXT, short]):
        assert_same_greedy_answers(greedy(tiny_model, context_cache=[caches[text] for text in texts],
                                          prompt=list(QUESTIONS), **settings),
                                   greedy(tiny_model, context=texts, prompt=list(QUESTIONS), **settings))
    assert caches[OTHER_TEXT].prefix_kv is not None and caches[short].prefix_kv is None


def test_the_prefix_is_prefilled_once_for_all_questions(tiny_model, tiny_processor):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    prompt = tiny_processor.encode_prompts([cache.num_chunks], QUESTIONS[1])["input_ids"][0]
    prefix = int((prompt == tiny_model.config.chunk_token_id).nonzero().max()) + 1  # up to the last chunk token
    lengths, hook = _decoder_tokens(tiny_model)
    for question in QUESTIONS[::-1]:
        tiny_model.generate(context_cache=cache, prompt=question, processor=tiny_processor, max_new_tokens=3,
                            min_new_tokens=3, do_sample=False)
    hook.remove()
    first_suffix = len(prompt) - prefix
    second_suffix = tiny_processor.encode_prompts([cache.num_chunks], QUESTIONS[0])["input_ids"].shape[1] - prefix
    assert lengths == [prefix, first_suffix, 1, 1, second_suffix, 1, 1]


def test_a_cache_saved_without_its_prefix_loads_and_makes_it_again(tiny_model, tiny_processor, tmp_path):
    settings = dict(prompt=QUESTIONS[0], processor=tiny_processor, max_new_tokens=6)
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    expected = greedy(tiny_model, context_cache=cache, **settings)
    cache.save(tmp_path / "small.safetensors")
    cache.save(tmp_path / "large.safetensors", prefix_kv=True)
    small, large = (ContextCache.load(tmp_path / name) for name in ("small.safetensors", "large.safetensors"))
    assert small.prefix_kv is None and small.prefix_ids is None
    assert (tmp_path / "large.safetensors").stat().st_size > (tmp_path / "small.safetensors").stat().st_size
    lengths, hook = _decoder_tokens(tiny_model)
    assert_same_greedy_answers(greedy(tiny_model, context_cache=small, **settings), expected)
    made_again = len(lengths)
    assert_same_greedy_answers(greedy(tiny_model, context_cache=large, **settings), expected)
    hook.remove()
    assert small.prefix_kv is not None
    assert len(lengths) == 2 * made_again - 1  # the saved prefix was read, not computed again


def test_a_prefix_made_by_other_decoder_weights_is_never_used(tiny_model, tiny_processor, tmp_path):
    settings = dict(prompt=QUESTIONS[0], processor=tiny_processor, max_new_tokens=8)
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    tiny_model.generate(context_cache=cache, **settings)
    cache.save(tmp_path / "doc.safetensors", prefix_kv=True)
    stale_hash, stale_keys = cache.decoder_hash, cache.prefix_kv[0][0]
    with torch.no_grad():
        tiny_model.model.language_model.layers[0].self_attn.k_proj.weight.mul_(3.0)
    for reused in (cache, ContextCache.load(tmp_path / "doc.safetensors")):
        assert_same_greedy_answers(greedy(tiny_model, context_cache=reused, **settings),
                                   greedy(tiny_model, context=TEXT, **settings))
        assert reused.decoder_hash != stale_hash and not torch.equal(reused.prefix_kv[0][0], stale_keys)


def test_ranking_reads_the_cached_encoder_ids_as_it_would_the_texts(tiny_model, tiny_processor, essay_text):
    """BM25 over the ids a cache keeps equals BM25 over the chunk texts tokenized again, [UNK] words included."""
    text = essay_text[:6000] + " The code word is \u2603\u2604 kept in the \u4e00 vault."
    cache = tiny_model.encode_context(text, processor=tiny_processor)
    assert cache.chunk_input_ids is not None
    without_ids = ContextCache(**{**vars(cache), "chunk_input_ids": None, "chunk_attention_mask": None})
    for question in ("Where is the \u2603\u2604 code word kept?", "What did the author do in college? Why?"):
        from_ids = tiny_model.chunk_scores(cache, question, tiny_processor, ranking="fused")
        from_texts = tiny_model.chunk_scores(without_ids, question, tiny_processor, ranking="fused")
        assert torch.equal(from_ids, from_texts)


def test_a_cache_of_another_copy_of_the_class_ranks_as_this_one(tiny_model, tiny_processor, essay_text):
    """A model loaded with trust_remote_code has its own copy of ContextCache; a cache made by the installed
    package's class (or by that copy) is still taken as a cache, by its fields."""
    cache = tiny_model.encode_context(essay_text[:6000], processor=tiny_processor)
    copied_class = type("ContextCache", (), {name: value for name, value in vars(ContextCache).items()
                                              if name not in ("__dict__", "__weakref__")})
    other_copy = copied_class(**vars(cache))
    assert not isinstance(other_copy, ContextCache)
    question = "What did the author do in college?"
    assert torch.equal(tiny_model.chunk_scores(other_copy, question, tiny_processor),
                       tiny_model.chunk_scores(cache, question, tiny_processor))


def test_a_cache_of_format_1_still_loads_and_answers(tiny_model, tiny_processor, tmp_path):
    """Saved before caches kept encoder ids and prefix keys/values: ranking tokenizes the texts, generation
    makes the prefix."""
    from safetensors.torch import save_file

    from modeling_e2llm.context_cache import content_fingerprint

    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    tensors = {"chunk_features": cache.chunk_features, "pooled": cache.pooled, "offsets": cache.offsets,
               "text_utf8": torch.frombuffer(bytearray(TEXT.encode("utf-8")), dtype=torch.uint8)}
    save_file(tensors, str(tmp_path / "old.safetensors"),
              metadata={"format": "e2llm-context-cache-1", "text_hash": cache.text_hash,
                        "weights_hash": cache.weights_hash, "content_hash": content_fingerprint(tensors)})
    old = ContextCache.load(tmp_path / "old.safetensors")
    assert old.chunk_input_ids is None and old.prefix_kv is None
    settings = dict(prompt=QUESTIONS[1], processor=tiny_processor, max_new_tokens=6, hybrid_top_k=2)
    assert_same_greedy_answers(greedy(tiny_model, context_cache=old, **settings),
                               greedy(tiny_model, context=TEXT, **settings))
