"""Efficiency benchmark: the FLOP count, the memory probes, the length plan, and one end-to-end run on the
tiny models that writes the JSON, the plots and the summary."""

import copy
import json
import statistics

import pytest
import torch
from transformers import BertConfig

from evaluation.efficiency import (CACHE_MODES, QUESTION, RESULTS_FILE, SUMMARY_FILE, TARGETS, check_targets,
                                   chunk_size_that_fits, context_lengths, linearity, main, parse_arguments, system_spec,
                                   write_texts)
from evaluation.efficiency_worker import load_benchmark_model, measure_answer, memory_mb, reset_peak_memory
from modeling_e2llm.flops import encoder_flops

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_encoder_flops_match_a_hand_count_for_a_tiny_config():
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    projections = 4 * 2 * 10 * 32 * 32  # q, k, v, output: 2*s*h*h each, s = 10 tokens
    feed_forward = 2 * 2 * 10 * 32 * 64  # up and down: 2*s*h*i each
    attention = 2 * 2 * 10 * 10 * 32  # QK^T and the weighted sum of V: 2*s*s*h each
    per_chunk = 2 * (projections + feed_forward + attention)  # 2 layers
    assert per_chunk == 353_280
    assert encoder_flops(config, [10]) == per_chunk
    assert encoder_flops(config, [10, 10]) == 2 * per_chunk


def test_peak_memory_counts_an_allocation_made_after_the_reset():
    assert reset_peak_memory()
    before = memory_mb()
    assert before["peak"] == pytest.approx(before["rss"], abs=1.0)
    block = torch.ones(50_000_000)  # 200 MB, every page written
    del block
    assert memory_mb()["peak"] - before["rss"] >= 190


def test_lengths_double_up_to_the_maximum_and_split_at_the_window():
    assert context_lengths(1024, 1_048_576, 8192) == ([1024, 2048, 4096, 8192],
                                                      [16384, 32768, 65536, 131072, 262144, 524288, 1048576])
    assert context_lengths(1000, 5000, 2048) == ([1000, 2000], [4000, 5000])
    with pytest.raises(ValueError, match="--min-tokens"):
        context_lengths(4096, 1024, 8192)


def test_texts_of_one_nominal_length_cut_to_different_sizes_keep_their_own_files(tiny_processor, essay_text,
                                                                                 tmp_path):
    # The comparison cuts its longest text to fit the window; the cache section may ask for that same length uncut.
    cut = write_texts([essay_text], tiny_processor.tokenizer, {2048: 1500}, tmp_path)
    whole = write_texts([essay_text], tiny_processor.tokenizer, {2048: 2048}, tmp_path)
    tokens = [len(tiny_processor.tokenizer(path.read_text(), add_special_tokens=False)["input_ids"])
              for _, path in (cut[2048], whole[2048])]
    assert (cut[2048][0], whole[2048][0]) == (1500, 2048)
    assert tokens == [1500, 2048]


def test_the_memory_target_names_its_million_tokens_when_no_run_went_beyond_the_window():
    targets = check_targets({"ratios": {}, "medians": {}, "linearity": None, "encoder_efficiency": {}})
    peak = next(target for target in targets if target["name"] == "peak_rss_1m_mb")
    assert peak["description"] == "process peak RSS at 1000000 tokens < 4096 MB" and peak["met"] is None


def test_the_context_cache_targets_read_prefix_reuse_with_hybrid_as_shipped_at_their_own_setting():
    reuse = {"total_s": 40.0, "encode_s": 15.0, "question_ttft_s": 2.5, "speedup": 4.9}
    cache = {"cache": {"context_tokens": 99_990, "cached-kv": reuse},
             "cache-no-hybrid": {"context_tokens": 99_990, "cached-kv": {**reuse, "question_ttft_s": 0.8, "speedup": 6.0}}}
    results = {"ratios": {}, "medians": {}, "linearity": None, "encoder_efficiency": {}, "context_cache": cache}
    targets = {target["name"]: target for target in check_targets(
        results | {"settings": {"cache_tokens": 100_000, "cache_questions": 10}})}
    assert (targets["cache_speedup"]["value"], targets["cache_speedup"]["met"]) == (4.9, False)
    assert (targets["cached_question_ttft_s"]["value"], targets["cached_question_ttft_s"]["met"]) == (2.5, False)
    smaller = {target["name"]: target for target in check_targets(
        results | {"settings": {"cache_tokens": 16_384, "cache_questions": 3}})}
    assert smaller["cache_speedup"]["met"] is None and smaller["cached_question_ttft_s"]["met"] is None


def test_linearity_is_one_on_a_straight_line_and_flags_a_bend():
    straight = {n: {"total_s": 5 + n / 1000} for n in (65_536, 262_144, 1_048_576)}
    assert linearity(straight)["max_deviation"] == pytest.approx(1.0)
    bent = {n: {"total_s": (n / 65_536) ** 2} for n in (65_536, 262_144, 1_048_576)}
    assert linearity(bent)["max_deviation"] > TARGETS["linearity"]
    assert linearity({16_384: {"total_s": 1.0}, 65_536: {"total_s": 4.0}}) is None  # too few points


def test_chunk_size_grows_until_the_text_fits_and_leaves_the_processor_alone(tiny_processor, essay_text):
    own = len(tiny_processor.chunk(essay_text))
    assert chunk_size_that_fits(tiny_processor, essay_text, own) == tiny_processor.chunk_size
    size = chunk_size_that_fits(tiny_processor, essay_text, own // 3)
    assert size > tiny_processor.chunk_size == 64
    tiny_processor.chunk_size = size
    assert len(tiny_processor.chunk(essay_text)) <= own // 3


def test_a_saved_model_folder_loads_like_the_encoder_and_decoder_it_was_made_of(tiny_paths, tiny_model,
                                                                                tiny_processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    model, processor, label = load_benchmark_model(model=str(tmp_path))
    composite, _, _ = load_benchmark_model(encoder=tiny_paths[0], decoder=tiny_paths[1])
    assert model.config.text_config.max_position_embeddings == composite.config.text_config.max_position_embeddings
    assert processor.chunk_size == tiny_processor.chunk_size and label == tmp_path.name


def test_an_encoder_without_a_decoder_is_refused(tiny_paths, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(tmp_path), "--encoder", tiny_paths[0]])
    assert "--encoder and --decoder together" in capsys.readouterr().err


def test_rag_chunk_counts_must_be_distinct(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(tmp_path), "--top-k", "5", "5"])
    assert "--top-k takes distinct chunk counts, got 5 5" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--repeats", "0"), ("--min-tokens", "-1"),
                                           ("--encoder-tokens-per-chunk-token", "0")])
def test_counts_below_one_are_refused_while_the_arguments_are_read(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(tmp_path), option, value])
    assert f"argument {option}: must be at least 1, got {value}" in capsys.readouterr().err


def test_the_benchmark_runs_end_to_end_on_tiny_models(tiny_paths, tmp_path):
    output = tmp_path / "efficiency"
    main(["--output", str(output), "--encoder", tiny_paths[0], "--decoder", tiny_paths[1], "--threads", "1",
          "--min-tokens", "2048", "--max-tokens", "4096", "--repeats", "1", "--new-tokens", "2",
          "--cache-tokens", "500", "--cache-questions", "2", "--matmul-size", "256", "--encoder-batch-size", "4",
          "--fast-encoder"])
    results = json.loads((output / RESULTS_FILE).read_text())
    assert {"cpu_model", "cores", "torch_threads", "torch_version"} <= results["machine"].keys()
    assert results["machine"]["torch_threads"] == 1 and results["matmul"]["peak_flops_per_s"] > 0
    runs = results["runs"]
    assert [run for run in runs if "error" in run] == []
    assert sorted((run["section"], run["system"]) for run in runs) == [
        ("cache", "cached"), ("cache", "cached-kv"), ("cache", "uncached"), ("compare", "e2llm"),
        ("compare", "e2llm_int8"), ("compare", "full"), ("compare", "rag_top40"), ("compare", "rag_top5"),
        ("long", "e2llm"), ("long", "e2llm_int8"), ("long", "rag_top40"), ("long", "rag_top5")]
    for run in runs:
        assert run["peak_mb"] >= run["rss_after_load_mb"] > 0 and run["working_mb"] >= 0 and run["total_s"] > 0

    compare = results["medians"]["compare"]
    [tokens] = compare["e2llm"]  # 2048 was cut so that the full prompt and answer fit the 2048 window
    assert 1900 < int(tokens) < 2048
    e2llm, full = compare["e2llm"][tokens], compare["full"][tokens]
    assert e2llm["decoder_input_tokens"] * 10 < full["decoder_input_tokens"]  # one token per chunk
    assert full["encoder_flops"] == 0 < e2llm["encoder_flops"]
    assert e2llm["encoder_forwards"] == -(-e2llm["encoder_chunks"] // 4)  # --encoder-batch-size reached the worker
    ratios = results["ratios"][tokens]["full"]
    assert ratios["prefill"] == pytest.approx(full["prefill_s"] / e2llm["prefill_s"])
    assert list(results["medians"]["long"]["e2llm"]) == ["4096"]
    # RAG at top 5 reads fewer chunks than at top 40, each system with its own top k
    assert compare["rag_top5"][tokens]["decoder_input_tokens"] < compare["rag_top40"][tokens]["decoder_input_tokens"]
    # the int8 system reads the same chunk tokens as E2LLM: the same decoder input, the same encoder work
    int8 = compare["e2llm_int8"][tokens]
    assert (int8["decoder_input_tokens"], int8["encoder_flops"]) == (e2llm["decoder_input_tokens"], e2llm["encoder_flops"])
    assert results["encoder_efficiency"]["4096"]["end_to_end_fraction"] > 0
    cache = results["context_cache"]["cache"]  # the tiny processor ships hybrid recall off: no second section
    assert list(results["context_cache"]) == ["cache"] and list(cache) == ["context_tokens", *CACHE_MODES]
    assert cache["cached-kv"]["speedup"] == pytest.approx(cache["uncached"]["total_s"] / cache["cached-kv"]["total_s"])
    for run in (run for run in runs if run["section"] == "cache"):  # first token before each answer's end
        assert all(0 < ttft < total for ttft, total in zip(run["per_question_ttft_s"], run["per_question_s"]))
        assert run["question_ttft_s"] == statistics.median(run["per_question_ttft_s"])
    assert [target["name"] for target in results["targets"]] == list(TARGETS)

    summary = (output / SUMMARY_FILE).read_text()
    for heading in ("## Targets", "## Within the window", "## Beyond the window", "## Encoder throughput",
                    "## Context cache", "With the int8 encoder (e2llm_int8), the full context's prefill"):
        assert heading in summary
    assert "| 4,096 | e2llm_int8 |" in summary  # beyond the window, the int8 row beside E2LLM's
    for plot in ("time.png", "memory.png"):
        assert (output / plot).read_bytes().startswith(PNG_MAGIC)


def test_with_the_knob_the_long_chunk_size_counts_chunk_tokens_and_refuses_what_no_size_fits(tiny_at, essay_text):
    _, processor = tiny_at(4)
    own = processor.encode_chunks([essay_text])["num_chunk_tokens"][0]
    size = chunk_size_that_fits(processor, essay_text, int(own * 0.8))
    processor.chunk_size = size
    assert processor.encode_chunks([essay_text])["num_chunk_tokens"][0] <= int(own * 0.8)
    with pytest.raises(ValueError, match="No chunk size fits.*--encoder-tokens-per-chunk-token"):
        chunk_size_that_fits(processor, essay_text, own // 8)  # whatever the size: at least (encoder tokens) / 4


def test_the_benchmark_composes_with_the_knob_and_refuses_it_for_a_saved_model(tiny_paths, tmp_path, capsys):
    model, processor, label = load_benchmark_model(encoder=tiny_paths[0], decoder=tiny_paths[1],
                                                   encoder_tokens_per_chunk_token=4)
    assert (model.config.encoder_tokens_per_chunk_token, processor.encoder_tokens_per_chunk_token) == (4, 4)
    assert label.endswith("one chunk token per 4 encoder tokens")
    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(tmp_path), "--model", str(tmp_path), "--encoder-tokens-per-chunk-token", "4"])
    assert "a saved --model keeps its own setting" in capsys.readouterr().err


def test_plain_e2llm_reads_the_chunk_tokens_without_the_passages_a_hybrid_model_quotes(tiny_model, tiny_processor,
                                                                                      essay_text, tmp_path):
    processor = copy.copy(tiny_processor)  # the fixture ships hybrid recall off; this model ships it on
    processor.hybrid_top_k = 3
    text = tmp_path / "text.txt"
    text.write_text(essay_text[:3000], encoding="utf-8")
    spec = {"mode": "answer", "text_path": str(text), "new_tokens": 1, "question": QUESTION, "threads": 1}
    decoder_tokens = {system: measure_answer(tiny_model, processor, spec | system_spec(system))["decoder_input_tokens"]
                      for system in ("e2llm", "e2llm_plain")}
    plain_prompt = processor.encode_prompts([processor.encode_chunks([essay_text[:3000]])["num_chunks"][0]], QUESTION)
    assert decoder_tokens["e2llm_plain"] == plain_prompt["input_ids"].shape[1] < decoder_tokens["e2llm"]
