"""The real embedded default (all-MiniLM-L6-v2 + SmolLM2-135M-Instruct from pip packages)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from modeling_e2llm.embedded_default import default_decoder_path
from modeling_e2llm.loading import DEMO_DIR, RUN_SETTINGS_FILE, load_model


@pytest.fixture(scope="module")
def untrained():
    return load_model(trained=False)


def test_embedded_default_composes_minilm_and_smollm2(untrained):
    model, processor, description = untrained
    assert description == "embedded default (UNTRAINED adapter)"
    assert model.config.encoder_config.hidden_size == 384 and model.config.text_config.hidden_size == 576
    assert model.config.pooling == "mean"  # from the package's 1_Pooling/config.json
    assert model.config.chunk_token_id == processor.chunk_token_id
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_the_decoder_ends_turns_where_its_chat_template_does(untrained):
    model, processor, _ = untrained
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert processor.tokenizer.eos_token_id == processor.tokenizer.pad_token_id == im_end == 2
    assert model.generation_config.eos_token_id == model.config.text_config.eos_token_id == im_end


def test_a_decoder_cached_with_other_special_tokens_is_converted_again(tmp_path, monkeypatch):
    # What transformers 5.17 makes of the GGUF (eos <|im_start|>, no pad): a training run there learned to end
    # its answers with <|im_start|>.
    stale = tmp_path / "SmolLM2-135M-Instruct"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"")
    (stale / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_start|>", "pad_token": None}))
    monkeypatch.setenv("E2LLM_CACHE", str(tmp_path))
    folder = default_decoder_path()
    settings = json.loads((stale / "tokenizer_config.json").read_text())
    assert folder == str(stale) and settings["eos_token"] == settings["pad_token"] == "<|im_end|>"
    assert (stale / "model.safetensors").stat().st_size > 100_000_000


def test_chunk_vectors_are_minilm_sentence_embeddings(untrained):
    model, processor, _ = untrained
    sentences = ["The cat sits on the mat.", "A feline rests on a rug.", "Quarterly revenue rose by ten percent."]
    batch = processor.encoder_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(model.model.pool_chunks(batch["input_ids"], batch["attention_mask"]))
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated  # pretrained semantics survive composition


def test_generates_from_a_20000_character_context(untrained, essay_text):
    model, processor, _ = untrained
    context = essay_text[:20000]
    spans = processor.chunk(context)
    assert 39 <= len(spans) <= 60 and "".join(context[s:e] for s, e in spans) == context
    ids = model.generate(context=context, prompt="What is this essay about?", processor=processor,
                         max_new_tokens=12, do_sample=False)
    assert 0 < ids.shape[1] <= 12
    assert processor.decode(ids[0], skip_special_tokens=True).strip()


def test_the_committed_demo_weights_are_what_the_embedded_default_loads(untrained):
    trained, processor, description = load_model()
    settings = json.loads((DEMO_DIR / RUN_SETTINGS_FILE).read_text())
    saved = load_file(DEMO_DIR / "adapter_model.safetensors")
    assert description == "embedded default with the demo weights"
    assert processor.hybrid_top_k == settings["processor"]["hybrid_top_k"]
    assert torch.equal(trained.model.adapter.layers[0].weight, saved["base_model.model.model.adapter.layers.0.weight"])
    trained_query = trained.model.language_model.layers[0].self_attn.q_proj.weight
    base_query = untrained[0].model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(trained_query, base_query)  # the decoder's LoRA is merged in


def test_a_context_cache_reuses_its_decoder_prefix_with_the_same_greedy_answers(untrained, essay_text):
    """SmolLM2's chat template and tokenizer around the chunk tokens: the reused prefix gives the tokens (and
    logits) of the uncached path, hybrid passages included."""
    model, processor, _ = untrained
    context = essay_text[:4000]
    cache = model.encode_context(context, processor=processor)
    answers = [model.generate(**source, prompt="What did the author work on?", processor=processor, max_new_tokens=8,
                              do_sample=False, hybrid_top_k=2, output_logits=True, return_dict_in_generate=True)
               for source in ({"context": context}, {"context_cache": cache})]
    assert answers[1].sequences.tolist() == answers[0].sequences.tolist()
    assert len(set(answers[0].sequences[0].tolist())) > 1  # a real answer, not one token repeated
    torch.testing.assert_close(torch.stack(answers[1].logits), torch.stack(answers[0].logits), atol=1e-3, rtol=1e-3)
    assert cache.prefix_kv is not None and cache.prefix_kv[0][0].shape[-2] > cache.num_chunk_tokens
