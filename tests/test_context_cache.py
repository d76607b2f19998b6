"""Context cache: encode once, ask many questions; stale caches are refused; encoding memory is bounded."""

import json

import pytest
import torch

from modeling_e2llm import ContextCache

TEXT = ("The committee met on Tuesday. Alice chaired the meeting and opened with the budget. "
        "Bob presented the new design for the remote control.\nCarol asked about the cost. ") * 4


def test_cached_generation_equals_uncached(tiny_model, tiny_processor, tmp_path):
    cache = tiny_model.encode_context(TEXT, processor=tiny_processor)
    cache.save(tmp_path / "doc.safetensors")
    loaded = ContextCache.load(tmp_path / "doc.safetensors")
    for question in ("Who chaired?", "What did Bob present?"):
        uncached = tiny_model.generate(context=TEXT, prompt=question, processor=tiny_processor, max_new_tokens=6,
                                       do_sample=False)
        cached = tiny_model.generate(context_cache=loaded, prompt=question, processor=tiny_processor,
                                     max_new_tokens=6, do_sample=False)
        assert cached.tolist() == uncached.tolist()


def test_cache_holds_chunk_tokens_pooled_vectors_and_offsets(tiny_model, tiny_processor):
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


def test_with_the_knob_a_cache_holds_the_chunk_tokens_and_one_ranking_vector_per_chunk(tiny_at, tmp_path):
    model, processor = tiny_at(4)
    cache = model.encode_context(TEXT, processor=processor)
    cache.save(tmp_path / "doc.safetensors")
    loaded = ContextCache.load(tmp_path / "doc.safetensors")
    chunks = processor.encode_chunks([TEXT])
    assert (loaded.num_chunks, loaded.num_chunk_tokens) == (chunks["num_chunks"][0], chunks["num_chunk_tokens"][0])
    assert loaded.pooled.shape == (loaded.num_chunks, 32) and loaded.encoder_tokens_per_chunk_token == 4
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
