"""model_card: Hub metadata and model-index from the harness's summaries, and the README body."""

import json
import re

import pytest
import yaml
from huggingface_hub import ModelCard

from model_card import (CardInputError, ModelFacts, about_text, build_model_card, load_efficiency,
                        load_eval_summary, load_training_summary, model_facts)

ENCODER, DECODER = "sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def facts() -> ModelFacts:
    return ModelFacts(repo_id="org/e2llm-test", encoder_name=ENCODER, decoder_name=DECODER, chunk_size=512,
                      chunk_overlap=0.0, max_chunk_tokens=256, pooling="mean", adapter_num_layers=2,
                      decoder_window=8192, prompt_tokens=42, tokens_per_chunk=97.4, num_parameters=157_000_000,
                      dtype="float32", trained=True)


def write_summary(folder, name: str, **fields) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(fields))
    return str(path)


@pytest.fixture
def summaries(tmp_path) -> list[str]:
    """Two summary.json files as the evaluation harness writes them."""
    return [
        write_summary(tmp_path, "qmsum", system="e2llm", model="runs/x/final", dataset="qmsum/val", tasks=["qmsum"],
                      count=272, skipped=0, primary_metric="rouge_gmean", seconds_per_example=2.5,
                      metrics={"rouge1": 0.312, "rouge2": 0.081, "rougeL": 0.205, "rouge_gmean": 0.17}),
        write_summary(tmp_path, "squad", system="e2llm", dataset="squad/dev", task="squad", count=50,
                      metrics={"qa_f1": 0.44, "qa_recall": 0.5}),
    ]


def saved_and_loaded(card, tmp_path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_metadata_names_license_library_pipeline_tags_base_models_and_datasets(facts, tmp_path):
    card = saved_and_loaded(build_model_card(facts, datasets=["org/long-data"]), tmp_path)
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"e2llm", "custom_code"} <= set(card.data.tags)
    assert card.data.base_model == [ENCODER, DECODER]
    assert card.data.datasets == ["org/long-data"]


def test_model_index_carries_every_metric_of_the_summaries_given(facts, summaries, tmp_path):
    evaluations = [load_eval_summary(path) for path in summaries]
    card = saved_and_loaded(build_model_card(facts, evaluations), tmp_path)
    published = {(r.dataset_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert published == {("qmsum/val", "ROUGE-1"): 0.312, ("qmsum/val", "ROUGE-2"): 0.081,
                         ("qmsum/val", "ROUGE-L"): 0.205, ("qmsum/val", "ROUGE geometric mean"): 0.17,
                         ("squad/dev", "QA F1"): 0.44, ("squad/dev", "QA recall"): 0.5}
    task_types = {r.dataset_type: r.task_type for r in card.data.eval_results}
    assert task_types == {"qmsum/val": "summarization", "squad/dev": "question-answering"}
    assert card.data.model_name == "e2llm-test"


def test_only_the_named_system_enters_the_model_index_but_the_table_shows_all(facts, summaries, tmp_path):
    baseline = write_summary(tmp_path, "trunc", system="truncation", dataset="qmsum/val", tasks=["qmsum"],
                             count=272, metrics={"rouge1": 0.25})
    evaluations = [load_eval_summary(path) for path in [*summaries, baseline]]
    card = saved_and_loaded(build_model_card(facts, evaluations, system="e2llm"), tmp_path)
    assert 0.25 not in {r.metric_value for r in card.data.eval_results}
    assert re.search(r"\| truncation \| qmsum/val \| qmsum \| 272 \| 0\.25 \|", card.text)
    own_row = r"\| e2llm \| qmsum/val \| qmsum \| 272 \| 0\.312 \| 0\.081 \| 0\.205 \| 0\.17 \| – \| – \|"
    assert re.search(own_row, card.text)


def test_summaries_of_several_systems_without_system_are_refused(facts, summaries, tmp_path):
    baseline = write_summary(tmp_path, "rag", system="rag", dataset="squad/dev", metrics={"qa_f1": 0.3})
    with pytest.raises(CardInputError, match=r"several systems \['e2llm', 'rag'\].*--system"):
        build_model_card(facts, [load_eval_summary(path) for path in [*summaries, baseline]])


def test_summary_without_metrics_is_refused_showing_the_expected_shape(tmp_path):
    path = write_summary(tmp_path, "bad", system="e2llm", dataset="qmsum/val", scores={"rouge1": 0.3})
    with pytest.raises(CardInputError, match=r"lacks 'dataset' or a 'metrics' mapping; expected \{\"system\""):
        load_eval_summary(path)


def test_summary_with_a_non_numeric_metric_is_refused_naming_it(tmp_path):
    path = write_summary(tmp_path, "bad", dataset="qmsum/val", metrics={"rouge1": "0.3"})
    with pytest.raises(CardInputError, match="metric 'rouge1' is '0.3', not a finite number"):
        load_eval_summary(path)


def test_body_shows_how_to_load_and_call_the_model_in_five_lines(facts):
    card = build_model_card(facts)
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1).strip().splitlines()
    assert len(snippet) <= 5
    assert 'AutoModelForCausalLM.from_pretrained("org/e2llm-test", trust_remote_code=True)' in snippet[1]
    assert any("generate(context=context, prompt=" in line for line in snippet)


def test_body_states_chunk_size_compression_and_longest_context(facts):
    text = build_model_card(facts).text
    assert "| Chunk size | up to 512 characters" in text
    assert "one chunk token replaces about 97 decoder tokens" in text
    assert f"about {8192 - 42:,} chunks, 4.2 million characters" in text


def test_body_cites_the_paper(facts):
    text = build_model_card(facts).text
    assert "E2LLM: Encoder Elongated Large Language Models for Long-Context Understanding and Reasoning" in text
    assert "arXiv:2409.06679" in text and "Liao, Zihan" in text


def test_untrained_model_is_flagged_at_the_top_and_a_trained_one_is_not(facts):
    assert "Untrained adapter" not in build_model_card(facts).text
    facts.trained = False
    text = build_model_card(facts).text
    assert text.index("Untrained adapter") < text.index("## What E2LLM is")
    assert "| Weights | encoder and decoder as pretrained, adapter randomly initialized (untrained) |" in text


def test_weights_row_says_whether_lora_is_merged_or_applied_on_load(facts):
    assert "| Weights | trained LoRA merged into the encoder and decoder" in build_model_card(facts).text
    facts.lora_merged = False
    kept = build_model_card(facts).text
    assert "plus the trained LoRA and adapter (`adapter_model.safetensors`), applied on load" in kept


def test_training_config_and_log_history_fill_the_training_table_without_machine_paths(facts, tmp_path):
    config = {"model": {"config": {"lora_rank": 8}}, "processor": {"chunk_size": 512},
              "data": {"reasoning": [{"path": "/home/me/data/squad/train.jsonl", "limit": 100},
                                     {"builder": "magic_number_haystack"}]},
              "training": {"max_steps": 400, "learning_rate": 2e-4}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "log_history.json").write_text(json.dumps(
        [{"loss": 2.5, "step": 10, "epoch": 0.1}, {"loss": 1.25, "step": 400, "epoch": 4.0},
         {"train_runtime": 812.5, "train_loss": 1.8, "step": 400, "epoch": 4.0}]))
    training = {**load_training_summary(tmp_path / "train.yaml"),
                **load_training_summary(tmp_path / "log_history.json")}
    text = build_model_card(facts, training=training).text
    for row in ("| training.max_steps | 400 |", "| model.config.lora_rank | 8 |", "| steps | 400 |",
                "| final training loss | 1.25 |", "| data.reasoning | squad/train.jsonl, magic_number_haystack |"):
        assert row in text
    assert "/home/me" not in text


def test_training_datasets_are_named_in_the_metadata(facts, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"datasets": ["org/qmsum-train"], "steps": 100}))
    training = load_training_summary(tmp_path / "summary.json")
    card = saved_and_loaded(build_model_card(facts, training=training), tmp_path)
    assert card.data.datasets == ["org/qmsum-train"]


def test_efficiency_rows_become_a_table(facts, tmp_path):
    (tmp_path / "eff.json").write_text(json.dumps([{"context_chars": 100000, "seconds": 3.5},
                                                   {"context_chars": 400000, "seconds": 9.25}]))
    text = build_model_card(facts, efficiency=load_efficiency(tmp_path / "eff.json")).text
    assert "## Efficiency\n\n| context_chars | seconds |\n| --- | --- |\n| 100,000 | 3.5 |\n| 400,000 | 9.25 |" in text
    assert "## Efficiency" not in build_model_card(facts).text


def test_model_facts_measure_compression_as_sample_tokens_per_chunk(tiny_model, tiny_processor):
    facts = model_facts(tiny_model, tiny_processor, "org/x", ENCODER, DECODER, trained=False)
    sample = about_text()
    tokens = len(tiny_processor.tokenizer(sample, add_special_tokens=False)["input_ids"])
    assert facts.tokens_per_chunk == pytest.approx(tokens / len(tiny_processor.chunk(sample)))
    assert (facts.chunk_size, facts.decoder_window, facts.pooling) == (64, 2048, "mean")
    assert facts.num_parameters == sum(p.numel() for p in tiny_model.parameters())


def test_with_the_knob_the_card_states_chunk_tokens_per_chunk_and_a_shorter_longest_context(tiny_at):
    model, processor = tiny_at(4)
    facts = model_facts(model, processor, "org/x", ENCODER, DECODER, trained=False)
    chunks = processor.encode_chunks([about_text()])
    assert facts.chunk_tokens_per_chunk == pytest.approx(chunks["num_chunk_tokens"][0] / chunks["num_chunks"][0])
    assert facts.chunk_tokens_per_chunk > 1
    assert facts.max_chunks == int((2048 - facts.prompt_tokens) / facts.chunk_tokens_per_chunk)
    text = build_model_card(facts).text
    assert f"one vector per 4 encoder tokens (about {facts.chunk_tokens_per_chunk:.1f} per chunk of up to 64" in text
    compression = facts.tokens_per_chunk / facts.chunk_tokens_per_chunk
    assert f"one chunk token replaces about {compression:.0f} decoder tokens" in text
