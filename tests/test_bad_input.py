"""Bad input at the five entry points (Python API, `python -m modeling_e2llm`, `evaluation.run`,
`training.train`, `upload.py`): each is refused with a message naming the input and the fix, or handled,
before any model loads where it can be; none loops, grows a process past 2 GB, or leaves files behind."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor

import upload
from evaluation import run
from modeling_e2llm import ContextCache, E2LLMConfig, E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.__main__ import main as ask_main
from training import train as train_command
from training.sources import load_records

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The committee met on Tuesday. Alice chaired the meeting and opened with the budget. "
        "Bob presented the new design for the remote control.\nCarol asked about the cost. ") * 4
EXAMPLE = {"id": "ex1", "context": TEXT, "question": "Who chaired the meeting?", "answer": "Alice",
           "answers": ["Alice"], "task": "squad", "meta": {}}
TWO_GB_IN_KB = 2 * 1024 * 1024


# --- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_paths) -> E2LLMForCausalLM:
    torch.manual_seed(2)
    return E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths).eval()


@pytest.fixture(scope="module")
def processor(tiny_paths) -> E2LLMProcessor:
    return E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64)


@pytest.fixture(scope="module")
def checkpoint(model, processor, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "one.jsonl"
    path.write_text(json.dumps(EXAMPLE) + "\n")
    return path


def run_limited(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python whose address space is capped at 4 GB (a runaway allocation fails there
    instead of taking the machine down). `code` sets `result`; returned with the peak resident memory and stderr."""
    wrapper = ("import json, resource, sys\n"
               "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
               f"sys.path.insert(0, {str(ROOT)!r})\n" + code +
               "\npeak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
               "\nprint(json.dumps({'result': result, 'peak_kb': peak_kb}))")
    done = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def corrupt_tensor_bytes(path: Path, name: str, replace) -> None:
    """Overwrite the bytes of tensor `name` in a safetensors file in place, keeping its header."""
    raw = bytearray(path.read_bytes())
    header_size = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8:8 + header_size])[name]["data_offsets"]
    start, end = start + 8 + header_size, end + 8 + header_size
    raw[start:end] = replace(bytes(raw[start:end]))
    path.write_bytes(bytes(raw))


def write_yaml(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# --- Bad 1: a folder that is not an E2LLM checkpoint --------------------------------------------------
LOAD_MODEL = """
from modeling_e2llm import E2LLMForCausalLM
try:
    E2LLMForCausalLM.from_pretrained(sys.argv[1])
    result = "loaded"
except (OSError, ValueError) as error:
    result = str(error)
"""


def test_folder_without_config_json_is_refused_without_building_a_default_model(checkpoint, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    outcome = run_limited(LOAD_MODEL, str(tmp_path))
    assert f"{str(tmp_path)!r} holds no config.json, so it is not a saved E2LLM" in outcome["result"]
    assert outcome["peak_kb"] < TWO_GB_IN_KB


def test_plain_decoder_folder_is_named_as_not_an_e2llm(tiny_paths):
    outcome = run_limited(LOAD_MODEL, tiny_paths[1])
    assert f"{tiny_paths[1]!r} holds a 'llama' model, not an E2LLM" in outcome["result"]
    assert "from_encoder_decoder_pretrained(encoder_path, decoder_path)" in outcome["result"]
    assert outcome["peak_kb"] < TWO_GB_IN_KB


def test_main_command_refuses_a_plain_decoder_folder_in_one_line(tiny_paths, tmp_path):
    (tmp_path / "doc.txt").write_text(TEXT)
    outcome = run_limited("from modeling_e2llm.__main__ import main\n"
                          "try:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n    result = exit.code\n",
                          "--file", str(tmp_path / "doc.txt"), "--question", "q", "--model", tiny_paths[1])
    assert outcome["result"] == 2 and outcome["peak_kb"] < TWO_GB_IN_KB
    assert f"error: {tiny_paths[1]!r} holds a 'llama' model, not an E2LLM" in outcome["stderr"]


def test_swapped_encoder_and_decoder_paths_are_named(tiny_paths):
    encoder, decoder = tiny_paths
    with pytest.raises(ValueError, match=f"encoder_path {decoder!r} holds LlamaForCausalLM, not a sentence encoder.*"
                                         "encoder first"):
        E2LLMForCausalLM.from_encoder_decoder_pretrained(decoder, encoder)


def test_config_without_sub_configs_is_refused():
    with pytest.raises(ValueError, match="needs both encoder_config and text_config; encoder_config and text_config "
                                         "missing. Compose a model with E2LLMForCausalLM.from_encoder_decoder"):
        E2LLMConfig()


def test_a_mistyped_model_folder_says_it_is_not_a_folder(tmp_path):
    with pytest.raises(OSError, match=rf"{str(tmp_path / 'chekpoint')!r} is not a folder here, nor a Hub id "
                                      r"\(ORG/NAME\): check the path"):
        E2LLMForCausalLM.from_pretrained(tmp_path / "chekpoint")


def test_a_weight_missing_from_the_file_is_refused_not_run_as_random(checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        metadata = f.metadata()
    weights = load_file(folder / "model.safetensors")
    del weights["model.adapter.layers.0.weight"]
    save_file(weights, folder / "model.safetensors", metadata=metadata)
    with pytest.raises(OSError, match=r"lacks 1 of the model's weights \(first: model.adapter.layers.0.weight\).*"
                                      r"model.save_pretrained\(folder\)"):
        E2LLMForCausalLM.from_pretrained(folder)


def test_a_damaged_weights_file_names_the_folder_and_the_fix(checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(OSError, match=f"The weights in {folder} are not readable safetensors.*header too large.*"
                                      "Save or download the folder again"):
        E2LLMForCausalLM.from_pretrained(folder)


def test_save_pretrained_onto_a_file_is_refused(model, tmp_path):
    (tmp_path / "model.bin").write_text("keep me")
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'model.bin'} is a file.*pass a folder path"):
        model.save_pretrained(tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_text() == "keep me"


# --- Bad 2: max_chunk_tokens too small to hold one character -----------------------------------------
@pytest.mark.parametrize("max_chunk_tokens", [0, 1, 2])
def test_max_chunk_tokens_below_one_character_is_refused_at_construction(tiny_paths, max_chunk_tokens):
    with pytest.raises(ValueError, match=rf"max_chunk_tokens must be an integer >= 3 \(the encoder's special "
                                         rf"tokens plus one character\), got {max_chunk_tokens}"):
        E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, max_chunk_tokens=max_chunk_tokens)


def test_max_chunk_tokens_set_later_is_checked_too(processor):
    with pytest.raises(ValueError, match="max_chunk_tokens must be an integer >= 3"):
        processor.max_chunk_tokens = 1
    assert processor.max_chunk_tokens == 512


# --- Bad 3: text the encoder cannot see ---------------------------------------------------------------
@pytest.mark.parametrize("context", [
    "\x00" * 5000,                                    # NUL bytes
    "\u200b\u200c\u200d\ufeff\x01\x02\x1f " * 300,    # zero-width and control characters
    "\U0001f600\U0001f389\U0001f680 " * 200,          # emoji only
    "x" * (1 << 20),                                  # one 1 MB "word" (2,048 chunks, as many as the window)
], ids=["nul", "zero-width-and-control", "emoji", "1MB-word"])
def test_context_the_encoder_cannot_represent_is_refused_not_answered(model, tiny_paths, context):
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths)  # 512 characters: longer than a word
    with pytest.raises(ValueError, match=f"The encoder cannot represent any of the context \\({len(context):,} "
                                         "characters\\).*Pass readable text"):
        model.generate(context=context, prompt="What is it about?", processor=processor, max_new_tokens=3)


def test_context_mostly_unrepresentable_is_answered_with_a_warning(model, processor):
    context = "Alice chaired the meeting. " * 4 + "\U0001f600" * 300
    with pytest.warns(UserWarning, match=r"The encoder cannot represent \d+% of the context.*Clean the text"):
        model.generate(context=context, prompt="Who chaired?", processor=processor, max_new_tokens=2)


def test_main_command_refuses_a_file_of_nul_bytes(checkpoint, tmp_path, capsys):
    (tmp_path / "nul.txt").write_text("\x00" * 5000)
    with pytest.raises(SystemExit) as exit_info:
        ask_main(["--file", str(tmp_path / "nul.txt"), "--question", "What is it?", "--model", str(checkpoint)])
    assert exit_info.value.code == 2
    assert "error: The encoder cannot represent any of the context (5,000 characters)" in capsys.readouterr().err


# --- Bad 4: hybrid settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("setting, value, error", [
    ("hybrid_top_k", -1, ValueError), ("hybrid_top_k", 2.5, TypeError), ("hybrid_top_k", "3", TypeError),
    ("hybrid_token_budget", 0, ValueError), ("hybrid_token_budget", -5, ValueError),
])
def test_hybrid_settings_out_of_range_are_refused_in_the_processor(tiny_paths, setting, value, error):
    with pytest.raises(error, match=f"{setting} must be an integer >= "):
        E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, **{setting: value})


@pytest.mark.parametrize("setting, value", [("hybrid_top_k", -1), ("hybrid_token_budget", 0)])
def test_hybrid_settings_out_of_range_are_refused_per_call_before_encoding(model, processor, setting, value):
    with mock.patch.object(model.model, "pool_chunks") as encoder:
        with pytest.raises(ValueError, match=f"{setting} must be an integer >= "):
            model.generate(context=TEXT, prompt="Who chaired?", processor=processor, max_new_tokens=2,
                           **{setting: value})
    encoder.assert_not_called()


# --- Bad 5: a damaged context cache -------------------------------------------------------------------
@pytest.fixture
def cache_file(model, processor, tmp_path) -> Path:
    path = tmp_path / "doc.safetensors"
    model.encode_context(TEXT, processor).save(path)
    return path


def test_cache_with_overwritten_chunk_features_is_refused(cache_file):
    corrupt_tensor_bytes(cache_file, "chunk_features", lambda data: torch.full(
        (len(data) // 4,), float("nan")).numpy().tobytes())
    with pytest.raises(ValueError, match="does not hold what was saved.*encode_context"):
        ContextCache.load(cache_file)


def test_cache_with_edited_text_is_refused(cache_file):
    corrupt_tensor_bytes(cache_file, "text_utf8", lambda data: data.replace(b"Alice", b"Mallo"))
    with pytest.raises(ValueError, match="does not hold what was saved"):
        ContextCache.load(cache_file)


def test_cache_file_that_is_not_safetensors_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "doc.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=f"{tmp_path / 'doc.safetensors'} is not a readable safetensors file.*"
                                         "model.encode_context"):
        ContextCache.load(tmp_path / "doc.safetensors")


def test_cache_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No context cache file at {tmp_path}"):
        ContextCache.load(tmp_path)


def test_cache_given_as_a_file_name_says_to_load_it(model, processor):
    with pytest.raises(TypeError, match="context_cache takes ContextCache objects, got str.*ContextCache.load"):
        model.generate(context_cache="doc.safetensors", prompt="q", processor=processor, max_new_tokens=2)


def test_encode_context_of_a_list_says_it_takes_one_text(model, processor):
    with pytest.raises(TypeError, match="encode_context takes one text \\(a string\\), got list"):
        model.encode_context([TEXT], processor)


# --- Bad 6: a folder without the processor's files ----------------------------------------------------
def test_folder_without_processor_files_is_refused_instead_of_using_the_decoder_tokenizer(checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    (folder / "processor_config.json").unlink()
    shutil.rmtree(folder / "encoder_tokenizer")
    with pytest.raises(OSError, match="lacks processor_config.json and encoder_tokenizer.*processor.save_pretrained"):
        AutoProcessor.from_pretrained(folder, trust_remote_code=True)


# --- wrong types and values of processor settings -----------------------------------------------------
@pytest.mark.parametrize("settings, error, message", [
    ({"chunk_size": "512"}, TypeError, "chunk_size must be an integer >= 1, got str '512'"),
    ({"chunk_size": 100.5}, TypeError, "chunk_size must be an integer >= 1, got float 100.5"),
    ({"chunk_overlap": "0.3"}, ValueError, r"chunk_overlap is a fraction of chunk_size in \[0, 1\).*got '0.3'"),
    ({"max_chunk_tokens": 100_000}, ValueError, "max_chunk_tokens must be at most 512, the encoder tokenizer's"),
    ({"reasoning_template": "{context} {question}"}, ValueError,
     r"reasoning_template has the fields \{context\} \{question\}; it must hold \{context\} \{query\}"),
])
def test_processor_settings_of_the_wrong_type_or_range_are_refused(tiny_paths, settings, error, message):
    with pytest.raises(error, match=message):
        E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, **settings)


# --- documents that contain the placeholder string ----------------------------------------------------
def test_document_containing_the_placeholder_is_quoted_as_text(model, processor):
    document = TEXT + "In the markup, every slot is written <chunk> by the authors. " * 3
    passages = model.hybrid_passages(document, "How is every slot written?", processor, top_k=100)
    assert any("<chunk>" in text for _, text in passages)
    ids = model.generate(context=document, prompt="How is every slot written?", processor=processor,
                         hybrid_top_k=100, max_new_tokens=2)
    assert ids.shape == (1, 2)


def test_restatement_target_containing_the_placeholder_holds_no_chunk_token(processor):
    batch = processor(TEXT, None, target="Restated: <chunk> stays text.")
    assert int((batch["input_ids"] == processor.chunk_token_id).sum()) == batch["chunk_input_ids"].shape[0]


# --- window errors that point at the right fix --------------------------------------------------------
def test_context_with_more_chunks_than_the_window_is_refused_before_encoding(model, processor):
    with mock.patch.object(model.model, "pool_chunks") as encoder:
        with pytest.raises(ValueError, match=r"\(3000 chunk tokens\) \+ 2 new tokens but the decoder's window is 2048 "
                                             r"tokens. Use a chunk_size about 1\.5x larger"):
            model.generate(context="This sentence is filler. " * 6000, prompt="q", processor=processor,
                           max_new_tokens=2)
    encoder.assert_not_called()


def test_hybrid_passages_over_the_window_name_the_budget(model, processor):
    with pytest.raises(ValueError, match="window is 2048 tokens. Ask for fewer new tokens, or shorten the prompt or "
                                         "the hybrid passages \\(smaller hybrid_token_budget\\)"):
        model.generate(context=TEXT * 40, prompt="Who chaired?", processor=processor, hybrid_top_k=1000,
                       hybrid_token_budget=100_000, max_new_tokens=2)


def test_max_length_with_raw_text_says_to_use_max_new_tokens(model, processor):
    with pytest.raises(ValueError, match=r"max_length=10 counts the prompt.*\(\d+ tokens here\): pass max_new_tokens"):
        model.generate(context=TEXT, prompt="Who chaired?", processor=processor, max_length=10)


# --- the main command ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ("café au lait".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3): convert it first, e.g. iconv"),
    ("Alice chaired.".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),
], ids=["latin-1", "utf-16"])
def test_main_command_names_a_non_utf8_file_and_how_to_convert_it(tmp_path, capsys, content, message):
    (tmp_path / "doc.txt").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        ask_main(["--file", str(tmp_path / "doc.txt"), "--question", "q"])
    assert exit_info.value.code == 2
    assert f"--file {tmp_path / 'doc.txt'} {message}" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--max-new-tokens", "0"), ("--threads", "-1")])
def test_main_command_refuses_counts_below_one(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        ask_main(["--file", str(tmp_path / "doc.txt"), "--question", "q", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got {value}" in capsys.readouterr().err


# --- evaluation.run -----------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--limit", "0", "must be at least 1, got 0"),
    ("--limit", "-1", "must be at least 1, got -1"),
    ("--max-new-tokens", "0", "must be at least 1, got 0"),
    ("--hybrid-top-k", "-1", "must be at least 0, got -1"),
    ("--hybrid-top-k", "2.5", "'2.5' is not a whole number"),
    ("--hybrid-budget", "0", "must be at least 1, got 0"),
])
def test_evaluation_refuses_bad_numbers_before_loading_anything(data_file, tmp_path, capsys, option, value, message):
    with mock.patch("evaluation.harness.load_model") as load:
        with pytest.raises(SystemExit) as exit_info:
            run.main(["--system", "e2llm", "--data", str(data_file), "--output", str(tmp_path / "out"), option, value])
    assert exit_info.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err
    load.assert_not_called()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, arguments", [
    ("evaluation.niah", ["--system", "e2llm", "--output", "out", "--lengths", "4000", "0"]),
    ("evaluation.hybrid_ranking", ["--model", "embedded", "--output", "out.json", "--threads", "0"]),
    ("evaluation.demo", ["restate", "--output", "out.json", "--limit", "0"]),
    ("training.experiments", ["experiment.yaml", "--arm", "a", "--max-steps", "0"]),  # 0 used to train the whole arm
])
def test_every_command_refuses_a_count_below_one_while_reading_its_arguments(command, arguments, capsys, tmp_path,
                                                                            monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)  # were a count let through, the command would write here
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(command).main(arguments)
    assert exit_info.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_evaluation_refuses_a_model_folder_that_is_not_an_e2llm(tiny_paths, data_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--system", "e2llm", "--model", tiny_paths[1], "--data", str(data_file),
                  "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"error: --model {tiny_paths[1]}: {tiny_paths[1]!r} holds a 'llama' model, not an E2LLM" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluation_data_with_invalid_bytes_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(json.dumps(EXAMPLE).encode() + b"\n" + json.dumps({**EXAMPLE, "id": "ex2"}).encode()[:-2]
                     + b"\xe9\"}\n")
    with pytest.raises(SystemExit):
        run.main(["--system", "e2llm", "--data", str(data), "--output", str(tmp_path / "out")])
    assert f"{data}, line 2: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unusable_examples_are_skipped_and_counted_not_fatal(checkpoint, tmp_path):
    data = tmp_path / "mixed.jsonl"
    unusable = [{**EXAMPLE, "id": "empty", "context": "   "}, {**EXAMPLE, "id": "nul", "context": "\x00" * 300},
                {**EXAMPLE, "id": "placeholder", "question": "What does <chunk> mean?"}]
    data.write_text("".join(json.dumps(example) + "\n" for example in [EXAMPLE, *unusable]))
    summary = run.main(["--system", "e2llm", "--model", str(checkpoint), "--data", str(data),
                        "--output", str(tmp_path / "out"), "--max-new-tokens", "2"])
    assert summary["count"] == 1 and summary["skipped"] == 3
    skipped = {r["id"]: r["skipped"] for r in map(json.loads, (tmp_path / "out" / "predictions.jsonl").open())
               if "skipped" in r}
    assert "empty or only white space" in skipped["empty"] and "cannot represent" in skipped["nul"]
    assert "reserved for chunk tokens" in skipped["placeholder"]


@pytest.mark.parametrize("file, content, where", [
    ("run.json", "{\"system\": \"e2llm\"", "run.json"),
    ("predictions.jsonl", "{\"id\": \"ex0\", \"task\"\n", "predictions.jsonl, line 1"),
])
def test_a_broken_run_file_names_the_file_and_line(data_file, tmp_path, capsys, file, content, where):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / file).write_text(content)
    with mock.patch("evaluation.harness.load_model", return_value=(mock.MagicMock(), mock.MagicMock(), "m")):
        with pytest.raises(SystemExit):
            run.main(["--system", "truncation", "--data", str(data_file), "--output", str(tmp_path / "out")])
    assert f"{tmp_path / 'out' / where} is not valid JSON" in capsys.readouterr().err


# --- training.train -----------------------------------------------------------------------------------
def training_yaml(tmp_path: Path, tiny_paths, data_file: Path, **changes) -> str:
    raw = {"model": {"encoder": tiny_paths[0], "decoder": tiny_paths[1]}, "processor": {"chunk_size": 64},
           "data": {"reasoning": [{"path": str(data_file)}]},
           "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 1}}
    for section, values in changes.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) and section in raw else values
    return write_yaml(tmp_path / "config.yaml", raw)


@pytest.mark.parametrize("changes, message", [
    ({"model": {"config": {"lora_rnak": 64}}}, r"Unknown key\(s\) \['lora_rnak'\] in config.model.config "
                                               r"\('lora_rnak': did you mean 'lora_rank'\?\)"),
    ({"adapter_learning_rate": -1}, "adapter_learning_rate must be > 0"),
    ({"training": {"max_steps": 0}}, r"config.training.max_steps must be at least 1 \(or -1: train "),
    ({"training": {"max_steps": -5}}, "config.training.max_steps must be at least 1 .*got -5"),
    ({"trainable": False}, "config.trainable must be a mapping, got bool"),
    ({"training": {"learning_rate": "1e-3"}}, "config.training.learning_rate must be float or int, got str '1e-3' "
                                              r"\(PyYAML reads 1e-3 as text: write 1.0e-3\)"),
    ({"tasks": {"understanding_ratio": "half"}}, "config.tasks.understanding_ratio must be float or int, got str"),
    ({"training": {"max_steps": "ten"}}, "config.training.max_steps must be int, got str 'ten'"),
    ({"training": {"per_device_train_batch_size": 0}}, "per_device_train_batch_size must be at least 1, got 0"),
    ({"data": {"reasoning": [{"path": "x.jsonl", "limt": 3}]}},
     r"Unknown key\(s\) \['limt'\] in config.data.reasoning\[0\] \('limt': did you mean 'limit'\?\)"),
    ({"processor": {"hybrid_top_k": -1}}, "processor.hybrid_top_k must be at least 0, got -1"),
    ({"data": {"num_proc": 0}}, "data.num_proc must be at least 1, got 0"),
], ids=["lora_rnak", "negative-adapter-lr", "max_steps-0", "max_steps-negative", "trainable-false",
        "lr-as-text", "ratio-half", "max_steps-ten", "batch-size-0", "source-key-typo", "hybrid-top-k", "num-proc-0"])
def test_training_config_mistakes_stop_the_command_before_anything_loads(tiny_paths, data_file, tmp_path, capsys,
                                                                           changes, message):
    config = training_yaml(tmp_path, tiny_paths, data_file, **changes)
    with mock.patch.object(train_command, "load_model_and_processor") as load:
        with pytest.raises(SystemExit) as exit_info:
            train_command.main(["--config", config])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {config}: ") and re.search(message, error), error
    load.assert_not_called()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line", [b'{"context": "caf\xe9"}', b'{"context": "cut off'], ids=["latin-1", "broken-json"])
def test_training_data_line_that_is_not_utf8_json_is_named(tmp_path, line):
    data = tmp_path / "data.jsonl"
    data.write_bytes(json.dumps(EXAMPLE).encode() + b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=f"{data}, line 2 is not a UTF-8 JSON line.*convert the file to UTF-8"):
        load_records({"path": str(data)})


# --- Bad 9 and upload.py ------------------------------------------------------------------------------
def test_a_model_trained_on_custom_models_is_published(tiny_paths, tmp_path, essay_text):
    from test_training import tiny_config

    final = Path(train_command.train(tiny_config(tiny_paths, tmp_path, essay_text)).args.output_dir) / "final"
    out = tmp_path / "hub"
    status = upload.main(["--repo-id", "org/tiny-e2llm", "--checkpoint", str(final), "--encoder-name", "org/enc",
                          "--decoder-name", "org/dec", "--output-dir", str(out), "--dry-run"])
    assert status == 0 and (out / "model.safetensors").is_file()  # the fresh-process load check passed too


def test_upload_of_a_folder_with_damaged_weights_says_it_does_not_load(checkpoint, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 100)
    status = upload.main(["--repo-id", "org/x", "--checkpoint", str(folder), "--dry-run",
                          "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert f"error: Checkpoint {folder} does not load: The weights in {folder} are not readable safetensors" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_upload_names_a_plain_decoder_folder_as_not_an_e2llm(tiny_paths, tmp_path, capsys):
    status = upload.main(["--repo-id", "org/x", "--checkpoint", tiny_paths[1], "--dry-run",
                          "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert f"{tiny_paths[1]} holds a 'llama' model, not an E2LLM: train one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
