"""E2LLMForCausalLM on tiny random models: merging, loss, causality, batching, generation, save/load, LoRA."""

import copy
import json
import warnings
from unittest import mock

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.generation.streamers import BaseStreamer

from conftest import HostReads, assert_same_greedy_answers, greedy, run_isolated
from modeling_e2llm import E2LLMConfig, E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm import modeling_e2llm
from modeling_e2llm.lora import lora_config

TEXT = ("The committee met on Tuesday. Alice chaired the meeting and opened with the budget. "
        "Bob presented the new design for the remote control.\nCarol asked about the cost. ") * 4
SHORT = "A short note about lunch. It was pasta."


def test_chunk_features_replace_exactly_the_placeholders(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?")
    features = tiny_model.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"])
    embeds = tiny_model.model.embed_inputs(batch["input_ids"], batch["chunk_input_ids"], batch["chunk_attention_mask"])
    mask = batch["input_ids"][0] == tiny_model.config.chunk_token_id
    assert features.shape == (int(mask.sum()), tiny_model.config.text_config.hidden_size)
    torch.testing.assert_close(embeds[0, mask], features)
    plain = tiny_model.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[0, ~mask], plain[0, ~mask])


def test_encoder_batch_size_does_not_change_chunk_vectors(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT + "Short.", "q")  # chunks of different lengths, sorted internally
    ids, mask = batch["chunk_input_ids"], batch["chunk_attention_mask"]
    tiny_model.config.encoder_batch_size = 1
    one_by_one = tiny_model.model.pool_chunks(ids, mask)
    tiny_model.config.encoder_batch_size = 32
    torch.testing.assert_close(tiny_model.model.pool_chunks(ids, mask), one_by_one, atol=1e-5, rtol=1e-5)


def test_a_forward_makes_one_encoder_call_per_token_budget_batch(tiny_model, tiny_processor, essay_text):
    batch = tiny_processor([essay_text[:3000], essay_text[3000:5000]], ["Why?", "Who?"], target=["So.", "Her."])
    chunks, width = batch["chunk_input_ids"].shape  # over 100 chunks of 64 characters, padded to the longest
    calls = []
    tiny_model.model.encoder.register_forward_hook(lambda *_: calls.append(1))
    tiny_model.config.encoder_batch_tokens = 20 * width  # 20 chunks a forward
    tiny_model.train()(**batch).loss.backward()
    assert chunks > 40 and len(calls) == -(-chunks // 20)  # not chunks / encoder_batch_size (8) forwards


def test_loss_is_cross_entropy_over_target_tokens_only(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?", target="Alice.")
    output = tiny_model(**batch)
    logits, labels = output.logits[0, :-1], batch["labels"][0, 1:]
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(output.loss, expected)
    assert int(keep.sum()) == len(tiny_processor.tokenizer("Alice.", add_special_tokens=False)["input_ids"]) + 1


def test_decoder_stays_causal_after_composition(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?")
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, -1] = 1234
    first, second = tiny_model(**batch).logits, tiny_model(**changed).logits
    torch.testing.assert_close(first[0, :-1], second[0, :-1])
    assert not torch.allclose(first[0, -1], second[0, -1])


def test_batched_logits_equal_single_logits(tiny_model, tiny_processor):
    batch = tiny_processor([TEXT, SHORT], ["Who chaired?", "What was lunch?"])
    logits = tiny_model(**batch).logits
    for row, (context, prompt) in enumerate([(TEXT, "Who chaired?"), (SHORT, "What was lunch?")]):
        single = tiny_model(**tiny_processor(context, prompt)).logits[0]
        torch.testing.assert_close(logits[row, -single.shape[0]:], single, atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_single_generation(tiny_model, tiny_processor):
    contexts, prompts = [TEXT, SHORT], ["Who chaired?", "What was lunch?"]
    batched, batched_logits = greedy(tiny_model, context=contexts, prompt=prompts, processor=tiny_processor,
                                     max_new_tokens=6)
    for row, (context, prompt) in enumerate(zip(contexts, prompts)):
        single = greedy(tiny_model, context=context, prompt=prompt, processor=tiny_processor, max_new_tokens=6)
        assert_same_greedy_answers((batched[row:row + 1], batched_logits[:, row:row + 1]), single, atol=1e-4)


def test_text_generation_returns_new_tokens_matching_the_token_path(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?")
    from_tokens, token_logits = greedy(tiny_model, **batch, max_new_tokens=5)
    from_text = greedy(tiny_model, context=TEXT, prompt="Who chaired?", processor=tiny_processor, max_new_tokens=5)
    assert from_tokens[0, : batch["input_ids"].shape[1]].tolist() == batch["input_ids"][0].tolist()
    assert_same_greedy_answers((from_tokens[:, batch["input_ids"].shape[1]:], token_logits), from_text)


def test_beam_search_with_several_returns_gets_the_right_chunks(tiny_model, tiny_processor):
    """The logits of every beam as well as the returned tokens: the tiny random decoder's tokens hardly depend on
    the chunks it reads."""
    batch = tiny_processor([TEXT, SHORT], ["Who chaired?", "What was lunch?"])
    settings = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, output_logits=True,
                    return_dict_in_generate=True)
    beams = tiny_model.generate(**batch, **settings)
    beam_logits = torch.stack(beams.logits)  # (new tokens, 2 x 3 beams, vocab)
    for row, (context, prompt) in enumerate([(TEXT, "Who chaired?"), (SHORT, "What was lunch?")]):
        single = tiny_model.generate(context=context, prompt=prompt, processor=tiny_processor, **settings)
        assert beams.sequences[2 * row: 2 * row + 2, -4:].tolist() == single.sequences[:, -4:].tolist()
        torch.testing.assert_close(beam_logits[:, 3 * row: 3 * row + 3], torch.stack(single.logits), atol=1e-4,
                                   rtol=1e-4)


def test_streamer_receives_the_generated_tokens(tiny_model, tiny_processor):
    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens += value.flatten().tolist()

        def end(self):
            pass

    streamer = Collect()
    ids = tiny_model.generate(context=TEXT, prompt="q", processor=tiny_processor, max_new_tokens=5,
                              do_sample=False, streamer=streamer)
    assert streamer.tokens[-5:] == ids[0].tolist()


@pytest.mark.parametrize("top_k", [0, 2])
def test_generate_tokenizes_the_chunks_the_question_and_the_prompt_once_each(tiny_model, tiny_processor, top_k):
    calls = []
    tokenizers = {id(tiny_processor.encoder_tokenizer): "encoder", id(tiny_processor.tokenizer): "decoder"}
    classes = {type(tiny_processor.encoder_tokenizer), type(tiny_processor.tokenizer)}
    patches = [mock.patch.object(cls, "__call__", _counting(cls.__call__, tokenizers, calls)) for cls in classes]
    assert tiny_model.config.hybrid_ranking == "fused"  # its BM25 reads the chunks' ids from encoding them
    with patches[0], patches[-1]:
        tiny_model.generate(context=TEXT, prompt="Who chaired?", processor=tiny_processor, max_new_tokens=2,
                            hybrid_top_k=top_k)
    # hybrid recall also tokenizes the question twice (encoder: its vector, its BM25 terms), each candidate passage
    # to count its cost and the prompt again with the passages it chose (decoder)
    assert calls.count("encoder") == 1 + 2 * (top_k > 0)
    assert calls.count("decoder") == 1 + (top_k + 1 if top_k else 0)


def _counting(call, names: dict, calls: list):
    def counted(self, *args, **kwargs):
        calls.append(names[id(self)])
        return call(self, *args, **kwargs)
    return counted


def test_answer_returns_decoded_text(tiny_model, tiny_processor):
    ids = tiny_model.generate(context=TEXT, prompt="q", processor=tiny_processor, max_new_tokens=5, do_sample=False)
    expected = tiny_processor.decode(ids[0], skip_special_tokens=True).strip()
    assert tiny_model.answer(TEXT, "q", processor=tiny_processor, max_new_tokens=5) == expected
    assert tiny_model.answer([TEXT], ["q"], processor=tiny_processor, max_new_tokens=5) == [expected]


def test_save_and_load_in_a_fresh_virtualenv_with_only_the_model_runtime(tiny_model, tiny_processor, tmp_path):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    expected_ids = tiny_model.generate(context=TEXT, prompt="Who chaired?", processor=tiny_processor,
                                       max_new_tokens=6, do_sample=False)[0].tolist()
    expected_logits = tiny_model(**tiny_processor(TEXT, "Who chaired?")).logits[0, -1].tolist()
    stdout = run_isolated(f"""
import importlib.util, json, torch
from transformers import AutoModelForCausalLM, AutoProcessor
assert importlib.util.find_spec("peft") is None and importlib.util.find_spec("modeling_e2llm") is None
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
ids = model.generate(context={TEXT!r}, prompt="Who chaired?", max_new_tokens=6, do_sample=False)  # processor found by itself
with torch.no_grad():
    logits = model(**processor({TEXT!r}, "Who chaired?")).logits[0, -1]
print(json.dumps({{"ids": ids[0].tolist(), "logits": logits.tolist(), "module": type(model).__module__,
                  "tied": model.lm_head.weight is model.get_input_embeddings().weight}}))
""", cwd=tmp_path)
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")
    assert result["ids"] == expected_ids
    assert result["logits"] == expected_logits  # bit-identical
    assert result["tied"]


def test_a_saved_folder_holds_the_model_files_and_nothing_else_of_the_project(tiny_model, tiny_processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    code = sorted(path.name for path in tmp_path.rglob("*.py"))
    assert code == ["configuration_e2llm.py", "context_cache.py", "modeling_e2llm.py", "processing_e2llm.py"]
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix != ".py") == [
        "chat_template.jinja", "config.json", "encoder_tokenizer", "generation_config.json", "model.safetensors",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json"]


def test_forward_takes_chunks_encoded_or_pooled_as_well_as_chunk_ids(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?")
    pooled = tiny_model.model.pool_chunks(batch["chunk_input_ids"], batch["chunk_attention_mask"])  # (n, enc_hidden)
    from_ids = tiny_model(**batch).logits
    for given in ({"chunk_features": tiny_model.model.adapter(pooled)}, {"chunk_pooled": pooled}):
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **given).logits
        assert torch.equal(logits, from_ids), given.keys()


def test_placeholders_without_chunks_are_refused(tiny_model, tiny_processor):
    batch = tiny_processor(TEXT, "Who chaired?")
    with pytest.raises(ValueError, match="input_ids hold chunk placeholders but no chunks were given"):
        tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.mark.parametrize("k", [None, 4])
def test_a_training_step_on_the_accelerator_paths_reads_nothing_back(tiny_at, k, monkeypatch):
    # The CPU stand-in for the GPU test below: every check of "may this read a value back?" answers no, as on
    # an accelerator, and no op of the forward and backward (the encoder's and decoder's masks included) reads.
    monkeypatch.setattr(modeling_e2llm, "_reads_back_freely", lambda tensor: False)
    model, processor = tiny_at(k)
    batch = processor([TEXT, TEXT[:300]], ["Who chaired?", "Why?"], target=["Alice.", "To plan."])
    with HostReads() as reads:
        model.train()(**batch).loss.backward()
    assert reads.ops == []


def test_the_masks_built_for_an_accelerator_give_the_logits_of_transformers_own(tiny_at, monkeypatch):
    model, processor = tiny_at(None)
    batch = processor([TEXT, TEXT[:300]], ["Who chaired?", "Why?"])  # the second row padded
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        own = model(**batch).logits[real]
        monkeypatch.setattr(modeling_e2llm, "_reads_back_freely", lambda tensor: False)
        built_here = model(**batch).logits[real]
    torch.testing.assert_close(built_here, own, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on the CPU there is no device to wait for")
@pytest.mark.parametrize("k", [None, 4])
def test_a_training_forward_never_waits_for_the_gpu(tiny_at, k):
    model, processor = tiny_at(k)
    model = model.cuda().train()
    batch = processor([TEXT, TEXT[:300]], ["Who chaired?", "Why?"], target=["Alice.", "To plan."]).to("cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        loss = model(**batch).loss
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss.detach().cpu())


def test_the_encoder_and_decoder_attend_without_cudnn_and_leave_the_setting_as_it_was(tiny_model, tiny_processor):
    # cuDNN's SDPA kernel builds a graph per input shape: ~100 ms of host time a call on an H200 when lengths change
    # every batch (training/gpu/attention_backends.py). The flags are process-wide, so check them mid-call.
    seen = {}
    layers = {"encoder": tiny_model.model.encoder.encoder.layer[0], "decoder": tiny_model.model.language_model.layers[0]}
    hooks = [layer.register_forward_pre_hook(lambda module, args, part=part: seen.setdefault(part, set()).add(
        torch.backends.cuda.cudnn_sdp_enabled())) for part, layer in layers.items()]
    try:
        tiny_model.encode_context(TEXT, processor=tiny_processor)  # the encoder alone, outside a forward
        assert seen == {"encoder": {False}}
        tiny_model(**tiny_processor(TEXT, "Who chaired?"))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"encoder": {False}, "decoder": {False}} and torch.backends.cuda.cudnn_sdp_enabled()


def test_a_left_padded_row_of_the_accelerator_mask_attends_to_itself_alone(tiny_model, monkeypatch):
    # SDPA's memory-efficient kernel gives NaN for a row with nothing to attend to, and a NaN value poisons the
    # next layer's rows through their masked keys (0 * NaN).
    monkeypatch.setattr(modeling_e2llm, "_reads_back_freely", lambda tensor: False)
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = modeling_e2llm._mask_for(tiny_model.model.language_model, padding, causal=True)  # (B, 1, T, T)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert mask[1, 0].int().tolist() == torch.ones(4, 4, dtype=torch.int).tril().tolist()


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_decoder_cache_is_taken_under_either_name_without_a_warning(tiny_model, tiny_processor, name):
    batch = tiny_processor(TEXT, "Who chaired?")
    full = tiny_model(**batch).logits[0, -1]
    prefix = {key: value[:, :-1] for key, value in batch.items() if key.startswith(("input", "attention"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = tiny_model(**prefix, chunk_input_ids=batch["chunk_input_ids"],
                           chunk_attention_mask=batch["chunk_attention_mask"], use_cache=True)
        cache = first.cache if "cache" in first else first.past_key_values
        step = tiny_model(input_ids=batch["input_ids"][:, -1:], attention_mask=batch["attention_mask"],
                          use_cache=True, **{name: cache})
    assert torch.allclose(step.logits[0, -1], full, atol=1e-5)


def test_lora_trains_encoder_decoder_and_adapter_and_survives_save_load_merge(tiny_model, tiny_processor, tmp_path):
    base = copy.deepcopy(tiny_model)
    peft_model = get_peft_model(tiny_model, lora_config(tiny_model.config))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any(".encoder." in n and "lora_B" in n for n in names)
    assert any(".language_model." in n and "lora_B" in n for n in names)
    assert any(".adapter." in n for n in names)
    encoder_layers = tiny_model.config.encoder_config.num_hidden_layers
    assert not any(f".encoder.layer.{i}." in n for n in names for i in range(encoder_layers - 2))

    batch = tiny_processor(TEXT, "Who chaired?", target="Alice.")
    peft_model.train()
    peft_model(**batch).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".encoder." in n and "lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any(".adapter." in n and g.abs().sum() > 0 for n, g in grads.items())
    with torch.no_grad():  # make LoRA matter, then check that saving, loading and merging keep it
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    peft_model.eval()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "lora")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)
    assert type(merged) is E2LLMForCausalLM


def test_context_too_long_for_the_decoder_window_says_how_many_chunks_fit(tiny_model, tiny_processor):
    long_text = "This sentence is filler. " * 4080  # 2,040 chunks of 64 characters + the prompt; window 2,048
    with pytest.raises(ValueError, match=r"2040 chunk tokens\) \+ 2 new tokens but the decoder's window is 2048 tokens.*chunk_size about"):
        tiny_model.generate(context=long_text, prompt="q", processor=tiny_processor, max_new_tokens=2)


def test_processor_from_another_checkpoint_is_refused(tiny_model, tiny_paths):
    other = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_token="<|im_start|>")
    with pytest.raises(ValueError, match="different checkpoints"):
        tiny_model.generate(context=TEXT, prompt="q", processor=other, max_new_tokens=2)


def test_model_built_in_memory_asks_for_a_processor(tiny_model):
    with pytest.raises(ValueError, match="pass processor="):
        tiny_model.generate(context=TEXT, prompt="q", max_new_tokens=2)


def test_prompt_without_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="prompt= needs context="):
        tiny_model.generate(prompt="q", max_new_tokens=2)


def test_folder_without_weights_is_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors|weights"):
        E2LLMForCausalLM.from_pretrained(tmp_path)


def test_pooling_defaults_to_the_sentence_transformers_config(tmp_path, tiny_paths):
    from conftest import build_tiny_encoder

    encoder = build_tiny_encoder(tmp_path / "cls_encoder", pooling="cls")
    assert E2LLMForCausalLM.from_encoder_decoder_pretrained(str(encoder), tiny_paths[1]).config.pooling == "cls"
    assert E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths).config.pooling == "mean"


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_adapter_has_the_configured_depth(tiny_model, layers):
    config = E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                         adapter_num_layers=layers)
    adapter = E2LLMForCausalLM(config).model.adapter
    linears = [m for m in adapter.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == layers
    assert (linears[0].in_features, linears[-1].out_features) == (32, 48)


def test_invalid_config_values_are_refused(tiny_model):
    with pytest.raises(ValueError, match="adapter_num_layers"):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    adapter_num_layers=4)
    with pytest.raises(ValueError, match="pooling"):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    pooling="max")
    with pytest.raises(ValueError, match="hybrid_scoring must be one of"):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    hybrid_scoring="frozen")


def test_composing_twice_gives_identical_models(tiny_paths, tiny_processor):
    """The placeholder's new vocabulary row is deterministic, so a rebuilt checkpoint is the same model."""
    torch.manual_seed(5)
    first = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths)
    torch.manual_seed(6)
    second = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths)
    torch.testing.assert_close(first.lm_head.weight, second.lm_head.weight)
    assert first.generation_config.suppress_tokens == [first.config.chunk_token_id]


def test_generation_past_the_window_is_refused_before_it_starts(tiny_model, tiny_processor):
    with pytest.raises(ValueError, match=r"\+ 2040 new tokens but the decoder's window is 2048"):
        tiny_model.generate(context=TEXT, prompt="q", processor=tiny_processor, max_new_tokens=2040)


# --- the compression knob: encoder_tokens_per_chunk_token -----------------------------------------
def test_each_chunk_becomes_its_segment_means_through_the_adapter(tiny_at):
    model, processor = tiny_at(4)
    batch = processor(TEXT, "Who chaired?")
    expected = []
    for ids, mask in zip(batch["chunk_input_ids"], batch["chunk_attention_mask"]):
        n = int(mask.sum())  # the chunk's real encoder tokens, encoded alone without padding
        states = model.model.encoder(input_ids=ids[None, :n]).last_hidden_state[0]  # (n, enc_hidden)
        expected += [states[start:start + 4].mean(dim=0) for start in range(0, n, 4)]  # the last one shorter
    features = model.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"])
    torch.testing.assert_close(features, model.model.adapter(torch.stack(expected)), atol=1e-5, rtol=1e-5)
    assert features.shape[0] == int((batch["input_ids"] == model.config.chunk_token_id).sum())


def test_without_the_knob_a_chunk_token_is_the_mean_of_the_whole_chunk(tiny_at):
    model, processor = tiny_at(None)
    batch = processor(TEXT, "Who chaired?")
    expected = [model.model.encoder(input_ids=ids[None, :int(mask.sum())]).last_hidden_state[0].mean(dim=0)
                for ids, mask in zip(batch["chunk_input_ids"], batch["chunk_attention_mask"])]
    features = model.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"])
    torch.testing.assert_close(features, model.model.adapter(torch.stack(expected)), atol=1e-5, rtol=1e-5)


def test_a_segment_longer_than_every_chunk_gives_the_default_chunk_tokens_exactly(tiny_at):
    (default, processor), (whole, _) = tiny_at(None), tiny_at(512)
    batch = processor(TEXT, "Who chaired?")
    assert torch.equal(whole.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"]),
                       default.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"]))


@pytest.mark.parametrize("k, chunk_size", [(None, 64), (4, 64), (16, 256)])
def test_a_batch_of_two_contexts_with_different_chunk_counts_equals_each_alone(tiny_at, k, chunk_size):
    model, processor = tiny_at(k, chunk_size)
    contexts, prompts = [TEXT, SHORT], ["Who chaired?", "What was lunch?"]
    batch = processor(contexts, prompts)
    logits = model(**batch).logits
    batched, batched_logits = greedy(model, context=contexts, prompt=prompts, processor=processor, max_new_tokens=5)
    for row, (context, prompt) in enumerate(zip(contexts, prompts)):
        single = model(**processor(context, prompt)).logits[0]
        torch.testing.assert_close(logits[row, -single.shape[0]:], single, atol=1e-4, rtol=1e-4)
        alone = greedy(model, context=context, prompt=prompt, processor=processor, max_new_tokens=5)
        assert_same_greedy_answers((batched[row:row + 1], batched_logits[:, row:row + 1]), alone, atol=1e-4)


@pytest.mark.parametrize("k, chunk_size", [(4, 64), (16, 256)])
def test_the_text_path_and_the_token_path_generate_the_same_with_the_knob(tiny_at, k, chunk_size):
    model, processor = tiny_at(k, chunk_size)
    batch = processor(TEXT, "Who chaired?")
    from_tokens, token_logits = greedy(model, **batch, max_new_tokens=5)
    from_text = greedy(model, context=TEXT, prompt="Who chaired?", processor=processor, max_new_tokens=5)
    assert_same_greedy_answers(from_text, (from_tokens[:, batch["input_ids"].shape[1]:], token_logits))


def test_save_and_load_with_the_knob_in_a_fresh_virtualenv_generates_the_same_tokens(tiny_at, tmp_path):
    model, processor = tiny_at(4)
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    expected = greedy(model, context=TEXT, prompt="Who chaired?", processor=processor, max_new_tokens=6)
    stdout = run_isolated(f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
out = model.generate(context={TEXT!r}, prompt="Who chaired?", max_new_tokens=6, do_sample=False, output_logits=True,
                     return_dict_in_generate=True)
print(json.dumps({{"ids": out.sequences.tolist(), "logits": torch.stack(out.logits).tolist(),
                  "k": [model.config.encoder_tokens_per_chunk_token, processor.encoder_tokens_per_chunk_token]}}))
""", cwd=tmp_path)
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["k"] == [4, 4]
    assert_same_greedy_answers((torch.tensor(result["ids"]), torch.tensor(result["logits"])), expected)


@pytest.mark.parametrize("value", [0, -4, 2.5, "4", True])
def test_a_knob_that_is_not_a_positive_integer_is_refused(tiny_model, value):
    with pytest.raises(ValueError, match=r"encoder_tokens_per_chunk_token must be None .* or an integer >= 1"):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    encoder_tokens_per_chunk_token=value)


def test_the_knob_with_cls_pooling_is_refused(tiny_model):
    with pytest.raises(ValueError, match='pooling="cls".*set pooling="mean"'):
        E2LLMConfig(encoder_config=tiny_model.config.encoder_config, text_config=tiny_model.config.text_config,
                    pooling="cls", encoder_tokens_per_chunk_token=4)


def test_a_processor_with_another_knob_setting_is_refused_with_the_fix(tiny_at):
    model, _ = tiny_at(4)
    _, other = tiny_at(None)
    with pytest.raises(ValueError, match=r"encoder_tokens_per_chunk_token=None but the model pools with 4: set "
                                         r"processor.encoder_tokens_per_chunk_token = 4"):
        model.generate(context=TEXT, prompt="q", processor=other, max_new_tokens=2)


def test_a_context_too_long_with_the_knob_counts_chunk_tokens_and_suggests_a_larger_k(tiny_at):
    model, processor = tiny_at(4)
    long_text = "This sentence is filler. " * 1200  # 600 chunks of 64 characters, 14 encoder tokens -> 4 chunk tokens
    with pytest.raises(ValueError, match=r"\(2400 chunk tokens\) \+ 2 new tokens but the decoder's window is 2048 "
                                         r"tokens.*encoder_tokens_per_chunk_token about 1\.2x larger than 4"):
        model.generate(context=long_text, prompt="q", processor=processor, max_new_tokens=2)


def test_the_accelerator_path_keeping_empty_segments_gives_the_same_logits_generation_and_cache(tiny_at):
    """On an accelerator `chunk_tokens` keeps the empty segments after the chunk tokens (no read-back); run
    that path here on the CPU."""
    model, processor = tiny_at(4)
    batch = processor([TEXT, SHORT], ["Who chaired?", "What was lunch?"])
    expected_logits = model(**batch).logits
    expected_answer = greedy(model, context=TEXT, prompt="Who?", processor=processor, max_new_tokens=5)
    expected_cache = model.encode_context(TEXT, processor=processor).chunk_features
    with mock.patch("modeling_e2llm.modeling_e2llm._reads_back_freely", return_value=False):
        padded = model.model.get_chunk_features(batch["chunk_input_ids"], batch["chunk_attention_mask"])
        assert padded.shape[0] > int((batch["input_ids"] == model.config.chunk_token_id).sum())
        torch.testing.assert_close(model(**batch).logits, expected_logits)
        assert_same_greedy_answers(greedy(model, context=TEXT, prompt="Who?", processor=processor, max_new_tokens=5),
                                   expected_answer)
        assert torch.equal(model.encode_context(TEXT, processor=processor).chunk_features, expected_cache)
