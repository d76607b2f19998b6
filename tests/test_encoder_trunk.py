"""One encoder trunk for chunk tokens and ranking: the frozen lower layers run once per chunk batch, and only
the top `encoder_lora_layers` layers run twice (tuned for chunk tokens, pretrained copies for ranking)."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.embedded_default import default_decoder_path, default_encoder_path
from modeling_e2llm.lora import lora_config
from modeling_e2llm.modeling_e2llm import Int8Linear, _pool

TEXT = "".join(f"Paragraph {i} talks about topic number {i} in some detail. " for i in range(12))
QUESTION = "Which paragraph is about topic number 7? And which about topic 3?"  # two sentences: a padded batch


@pytest.fixture
def trunk_model(tiny_paths) -> E2LLMForCausalLM:
    """The tiny model with LoRA on its top layer only, so that its trunk holds a real layer (layer 0); its ranking
    vectors are whole-chunk means (no windows), which a separate encoder's pooled output is compared with."""
    torch.manual_seed(2)
    return E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths, encoder_lora_layers=1,
                                                            hybrid_window_tokens=None).eval()


def _tune_top_layer(model: E2LLMForCausalLM) -> None:
    """What training does to the chunk encoder, in miniature: the top layer's weights move."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.model.encoder.encoder.layer[-1].parameters():
            parameter.add_(3 * parameter.std() * torch.randn(parameter.shape, generator=generator))


def _pooled(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled output of a whole encoder: (n, L) -> (n, enc_hidden)."""
    with torch.no_grad():
        return _pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")


def _expected_by_separate_encoders(model, pretrained, processor):
    """Chunk tokens from the chunk encoder and ranking vectors of chunks and question from a separate, whole
    pretrained encoder: what a model holding a full copy computes."""
    chunks = processor.encode_chunks([TEXT])
    ids, mask = chunks["chunk_input_ids"], chunks["chunk_attention_mask"]
    sentences = processor.encoder_tokenizer(["Which paragraph is about topic number 7?", "And which about topic 3?"],
                                            padding="longest", return_tensors="pt")
    with torch.no_grad():
        features = model.model.adapter(_pooled(model.model.encoder, ids, mask))
    return features, _pooled(pretrained, ids, mask), _pooled(pretrained, sentences["input_ids"],
                                                             sentences["attention_mask"])


def _assert_same_as_separate_encoders(model, pretrained, processor) -> None:
    features, chunk_vectors, question_vectors = _expected_by_separate_encoders(model, pretrained, processor)
    cache = model.encode_context(TEXT, processor=processor)
    torch.testing.assert_close(cache.chunk_features, features)
    torch.testing.assert_close(cache.pooled, chunk_vectors)
    sentences = processor.encoder_tokenizer(["Which paragraph is about topic number 7?", "And which about topic 3?"],
                                            padding="longest", return_tensors="pt")
    questions = model.model.pool_chunks(sentences["input_ids"], sentences["attention_mask"], for_scoring=True)
    torch.testing.assert_close(questions, question_vectors)
    dense = torch.nn.functional.cosine_similarity(chunk_vectors.unsqueeze(1), question_vectors.unsqueeze(0), dim=-1)
    torch.testing.assert_close(model.chunk_scores(cache, QUESTION, processor, ranking="dense"), dense.max(dim=1).values)


def test_chunk_tokens_and_rankings_equal_those_of_a_separate_pretrained_encoder(trunk_model, tiny_processor):
    pretrained = copy.deepcopy(trunk_model.model.encoder)
    _tune_top_layer(trunk_model)
    _assert_same_as_separate_encoders(trunk_model, pretrained, tiny_processor)


def test_the_same_with_lora_injected_for_training_and_merged_for_export(trunk_model, tiny_processor):
    from peft import get_peft_model

    pretrained = copy.deepcopy(trunk_model.model.encoder)
    peft_model = get_peft_model(trunk_model, lora_config(trunk_model.config))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): move it, as training would
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name and ".encoder." in name:
                parameter.normal_(std=0.5)
    model = peft_model.base_model.model.eval()
    _assert_same_as_separate_encoders(model, pretrained, tiny_processor)
    _assert_same_as_separate_encoders(peft_model.merge_and_unload().eval(), pretrained, tiny_processor)


def _count_calls(model, kinds: tuple[type, ...]) -> dict[type, int]:
    counts = dict.fromkeys(kinds, 0)

    def count(module, args, output):  # after the forward: a layer that was stopped before it ran does not count
        counts[type(module)] += 1

    for module in model.modules():
        if isinstance(module, kinds):
            module.register_forward_hook(count)
    return counts


def test_the_lower_layers_run_once_per_chunk_batch_and_the_top_layer_twice(trunk_model, tiny_processor):
    trunk_model.config.encoder_batch_size = 4
    batches = -(-len(tiny_processor.chunk(TEXT)) // 4)
    counts = _count_calls(trunk_model, (BertEmbeddings, BertLayer))
    trunk_model.encode_context(TEXT, processor=tiny_processor)
    # 2 layers: layer 0 (the trunk) once, the tuned layer 1 and its pretrained copy once each
    assert counts == {BertEmbeddings: batches, BertLayer: 3 * batches}


def test_ranking_a_question_skips_the_tuned_top_layer(trunk_model, tiny_processor):
    counts = _count_calls(trunk_model, (BertEmbeddings, BertLayer))
    tokens = tiny_processor.encoder_tokenizer([QUESTION], return_tensors="pt")
    trunk_model.model.pool_chunks(tokens["input_ids"], tokens["attention_mask"], for_scoring=True)
    assert counts == {BertEmbeddings: 1, BertLayer: 2}  # layer 0, then the pretrained copy of layer 1


def test_only_the_top_layers_are_copied_for_ranking(trunk_model):
    ranking = trunk_model.model.ranking_layers
    assert len(ranking) == 1 and not any(parameter.requires_grad for parameter in ranking.parameters())
    torch.testing.assert_close(ranking[0].state_dict(), trunk_model.model.encoder.encoder.layer[1].state_dict())
    assert not any("scoring_encoder" in name for name in trunk_model.state_dict())


def test_lora_never_targets_the_ranking_layers(trunk_model):
    from peft import get_peft_model

    peft_model = get_peft_model(trunk_model, lora_config(trunk_model.config))
    tuned = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert tuned and all(".encoder.encoder.layer.1." in name or "language_model" in name for name in tuned)


def _as_saved_before_the_trunk(folder, pretrained) -> None:
    """Rewrite a saved folder's weights as the code before the shared trunk saved them: a whole pretrained
    encoder copy under `model.scoring_encoder.` and no `ranking_layers`."""
    weights = {name: tensor for name, tensor in load_file(folder / "model.safetensors").items()
               if not name.startswith("model.ranking_layers.")}
    weights.update({f"model.scoring_encoder.{name}": tensor.clone() for name, tensor in pretrained.state_dict().items()})
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_folder_with_the_old_whole_encoder_copy_loads_quietly_with_identical_outputs(trunk_model, tiny_processor,
                                                                                      tmp_path):
    pretrained = copy.deepcopy(trunk_model.model.encoder)
    _tune_top_layer(trunk_model)
    trunk_model.save_pretrained(tmp_path)
    _as_saved_before_the_trunk(tmp_path, pretrained)
    loaded, info = E2LLMForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"]  # what transformers would print a load report of
    loaded.eval()
    torch.testing.assert_close(loaded.model.ranking_layers.state_dict(), trunk_model.model.ranking_layers.state_dict())
    _assert_same_as_separate_encoders(loaded, pretrained, tiny_processor)


def test_hybrid_ranking_costs_a_saved_folder_only_the_copied_top_layers(tiny_paths, tmp_path):
    sizes = {}
    for scoring in ("base", "tuned"):
        model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths, encoder_lora_layers=1,
                                                                 hybrid_scoring=scoring)
        model.save_pretrained(tmp_path / scoring)
        sizes[scoring] = (tmp_path / scoring / "model.safetensors").stat().st_size
    top_layer = sum(tensor.numel() * tensor.element_size()
                    for tensor in model.model.encoder.encoder.layer[1].state_dict().values())
    assert top_layer <= sizes["base"] - sizes["tuned"] < top_layer + 4096  # + the safetensors header's entries


# --- the fast CPU encoder path (int8) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_encoder_model(tiny_paths) -> E2LLMForCausalLM:
    """The real all-MiniLM-L6-v2 with the tiny decoder: int8 error depends on real weights, not random ones."""
    return E2LLMForCausalLM.from_encoder_decoder_pretrained(default_encoder_path(), tiny_paths[1]).eval()


def test_the_int8_encoder_keeps_pooled_vectors_close_to_fp32_and_ranks_alike(real_encoder_model, essay_text):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(default_encoder_path(), default_decoder_path())
    fast_model = copy.deepcopy(real_encoder_model).quantize_encoder()
    fp32, fast = (model.encode_context(essay_text[:12000], processor=processor) for model in (real_encoder_model,
                                                                                              fast_model))
    for exact, quantized in ((fp32.pooled[fp32.window_mask], fast.pooled[fast.window_mask]),
                             (fp32.chunk_features, fast.chunk_features)):
        cosine = torch.nn.functional.cosine_similarity(exact, quantized, dim=-1)  # (real windows or chunks,)
        assert cosine.mean() >= 0.99 and cosine.min() >= 0.95  # one chunk of this essay: 0.967
    question = "What did the author work on before college?"
    top_5 = [set(model.chunk_scores(cache, question, processor).topk(5).indices.tolist())
             for model, cache in ((real_encoder_model, fp32), (fast_model, fast))]
    assert len(top_5[0] & top_5[1]) >= 4


def test_the_int8_path_replaces_every_linear_layer_of_encoder_and_ranking_layers(trunk_model):
    trunk_model.quantize_encoder()
    for part in (trunk_model.model.encoder, trunk_model.model.ranking_layers):
        assert not any(isinstance(module, torch.nn.Linear) for module in part.modules())
        assert any(isinstance(module, Int8Linear) for module in part.modules())
    assert isinstance(trunk_model.model.adapter.layers[0], torch.nn.Linear)  # the adapter stays fp32


def test_the_int8_path_is_refused_off_the_cpu_with_the_fix(trunk_model):
    with pytest.raises(ValueError, match="call it on a model on the CPU"):
        trunk_model.to("meta").quantize_encoder()


def test_the_int8_path_is_refused_in_training_and_with_unmerged_lora(trunk_model):
    from peft import get_peft_model

    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        trunk_model.train().quantize_encoder()
    get_peft_model(trunk_model.eval(), lora_config(trunk_model.config))
    with pytest.raises(ValueError, match="merge them first"):
        trunk_model.quantize_encoder()


def test_a_model_with_the_int8_encoder_is_not_saved(trunk_model, tmp_path):
    with pytest.raises(ValueError, match="save the fp32 model"):
        trunk_model.quantize_encoder().save_pretrained(tmp_path)
