"""Specification of the training step benchmark (training/benchmark.py), on the tiny models: what it compares
and how it accounts for a step's time. Its timings are figures for the command, never checked here."""

import json

import pytest
import torch
from transformers import AutoModel

from modeling_e2llm.embedded_default import default_encoder_path
from training.architectures import with_random_weights, write_architectures
from training.benchmark import RESULTS_FILE, SUMMARY_FILE, main


def tiny_config_file(tiny_paths, folder, essay_text) -> str:
    records = [{"id": f"r{i}", "context": essay_text[400 * i: 400 * i + 1200], "question": "Which word comes first?",
                "answer": essay_text[400 * i: 400 * i + 1200].split()[0]} for i in range(6)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"model": {"encoder": tiny_paths[0], "decoder": tiny_paths[1]}, "processor": {"chunk_size": 64},
              "data": {"understanding": [{"path": str(folder / "data.jsonl")}],
                       "reasoning": [{"path": str(folder / "data.jsonl")}]},
              "training": {"output_dir": "unused", "per_device_train_batch_size": 2}}
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    return str(folder / "config.yaml")


@pytest.fixture(scope="module")
def results(tiny_paths, tmp_path_factory, essay_text) -> dict:
    folder = tmp_path_factory.mktemp("benchmark")
    config = tiny_config_file(tiny_paths, folder, essay_text)
    main(["--config", config, "--steps", "2", "--warmup", "1", "--output", str(folder / "out")])
    written = json.loads((folder / "out" / RESULTS_FILE).read_text())
    written["summary"] = (folder / "out" / SUMMARY_FILE).read_text()
    return written


def test_plain_sft_reads_the_same_samples_and_decoder_tokens_and_the_encoder_the_same_chunks(results):
    e2llm, plain, encoder = results["e2llm"], results["plain_sft"], results["encoder_alone"]
    assert e2llm["samples"] == plain["samples"] == encoder["samples"] == 4  # 2 steps of 2
    assert e2llm["decoder_tokens"] == plain["decoder_tokens"] > 0
    assert e2llm["encoder_tokens"] == encoder["encoder_tokens"] > 0 == plain["encoder_tokens"]
    assert e2llm["model_flops"] == plain["model_flops"] + encoder["model_flops"]


def test_host_overhead_is_the_step_minus_the_models_forward_and_backward(results):
    time = results["e2llm"]["time"]
    assert time["host_overhead_s"] + time["forward_s"] + time["backward_s"] == pytest.approx(results["e2llm"]["step_s_mean"])
    assert 0 < time["encoder_s"] < time["forward_s"]
    assert "E2LLM step / (plain SFT step + encoder alone)" in results["summary"]


def test_an_architecture_folder_holds_no_weights_and_rebuilds_the_real_encoders_shapes(tmp_path):
    folder = write_architectures(tmp_path / "architectures")
    assert not list(folder.rglob("*.safetensors")) and (folder / "decoder" / "tokenizer.json").is_file()
    real = AutoModel.from_pretrained(default_encoder_path(), add_pooling_layer=False)
    drawn = AutoModel.from_pretrained(with_random_weights(folder / "encoder", tmp_path / "random"), add_pooling_layer=False)
    real_shapes = {name: p.shape for name, p in real.named_parameters()}
    assert {name: p.shape for name, p in drawn.named_parameters()} == real_shapes
    assert not torch.equal(drawn.embeddings.word_embeddings.weight, real.embeddings.word_embeddings.weight)


def test_the_profile_lists_the_ops_of_the_steps_after_the_warm_up(tiny_paths, tmp_path, essay_text):
    from training.profile import PROFILE_FILE, main as profile_main

    config = tiny_config_file(tiny_paths, tmp_path, essay_text)
    profile_main(["--config", config, "--steps", "1", "--rows", "40", "--output", str(tmp_path / "out")])
    table = (tmp_path / "out" / PROFILE_FILE).read_text()
    assert table.startswith("Ops by self_cpu_time_total:")
    assert "aten::addmm" in table or "aten::mm" in table  # the models' matmuls, not an empty profile


@pytest.mark.parametrize("command, option", [("benchmark", "--warmup"), ("benchmark", "--steps"),
                                             ("profile", "--steps"), ("profile", "--rows")])
def test_counts_below_one_are_refused_before_the_config_is_read(command, option, tmp_path, capsys):
    from training.profile import main as profile_main

    with pytest.raises(SystemExit) as exit_info:
        {"benchmark": main, "profile": profile_main}[command](
            ["--config", str(tmp_path / "absent.yaml"), option, "0", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err
