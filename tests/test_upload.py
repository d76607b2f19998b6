"""upload.py: the repository folder it builds loads on its own, and the upload path fails cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session
from peft import get_peft_model
from safetensors.torch import load_file

import upload
from model_card import build_model_card, model_facts
from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.lora import lora_config
from upload import PublishError

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "org/tiny-e2llm"
NAMES = ("org/tiny-encoder", "org/tiny-decoder")
CONTEXT = ("Mara keeps bees on the roof of the old library. Every spring she moves the hives closer to the "
           "lime trees, and every autumn she sells the honey at the market by the river. ") * 3
QUESTION = "Where does Mara sell the honey?"
Q_PROJ = "model.language_model.layers.0.self_attn.q_proj.weight"

# Runs in a new interpreter, outside the project: only the built folder and pip packages are available.
FRESH_PROCESS = """
import json, sys
from pathlib import Path
folder, project, context, question = sys.argv[1:5]
assert all(Path(p or ".").resolve() != Path(project) for p in sys.path), sys.path
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
ids = model.generate(context=context, prompt=question, processor=processor, max_new_tokens=8, do_sample=False)
own = sorted(m for m in sys.modules if m.split(".")[0] in ("modeling_e2llm", "model_card", "upload"))
print(json.dumps({"ids": ids.tolist(), "project_modules": own}))
"""


def generate_in_fresh_process(folder: Path, cwd: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(ROOT), CONTEXT, QUESTION],
                            cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def generate_in_process(model, processor) -> list[list[int]]:
    return model.generate(context=CONTEXT, prompt=QUESTION, processor=processor, max_new_tokens=8,
                          do_sample=False).tolist()


@pytest.fixture(scope="module")
def checkpoints(tiny_paths, tmp_path_factory) -> dict[str, Path]:
    """A saved E2LLM base folder and a peft adapter trained on it (LoRA weights nudged so merging matters)."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(3)
    model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths).eval()
    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    peft_model = get_peft_model(model, lora_config(model.config))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    peft_model.save_pretrained(root / "adapter")
    return {"base": root / "base", "adapter": root / "adapter"}


def build(checkpoint_dir: Path, output_dir: Path, base: Path | None = None, keep_lora: bool = False):
    """Build a folder like upload.py does; return the in-process model and processor it holds."""
    checkpoint = upload.load_checkpoint(checkpoint_dir, base)
    facts = model_facts(checkpoint.model, checkpoint.processor, REPO_ID, *NAMES, trained=True,
                        lora_merged=not keep_lora)
    model = upload.build_folder(checkpoint, output_dir, REPO_ID, NAMES, build_model_card(facts), keep_lora=keep_lora)
    return model, checkpoint.processor


@pytest.fixture(scope="module")
def merged_build(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("merged") / "tiny-e2llm"
    model, processor = build(checkpoints["adapter"], folder, base=checkpoints["base"])
    return folder, model, processor


# --- the built folder --------------------------------------------------------------------------------
def test_merged_folder_loads_alone_in_a_fresh_process_and_generates_like_the_model_in_process(merged_build, tmp_path):
    folder, model, processor = merged_build
    fresh = generate_in_fresh_process(folder, cwd=tmp_path)
    assert fresh["project_modules"] == []
    assert fresh["ids"] == generate_in_process(model, processor)


@pytest.fixture(scope="module")
def kept_build(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kept") / "tiny-e2llm"
    model, processor = build(checkpoints["adapter"], folder, base=checkpoints["base"], keep_lora=True)
    return folder, model, processor


def test_keep_lora_folder_loads_alone_with_its_adapter_and_generates_like_the_peft_model(kept_build, tmp_path):
    folder, model, processor = kept_build
    fresh = generate_in_fresh_process(folder, cwd=tmp_path)
    assert fresh["project_modules"] == []
    assert fresh["ids"] == generate_in_process(model, processor)


def test_keep_lora_folder_holds_the_base_weights_and_an_adapter_naming_the_repository(checkpoints, kept_build):
    folder = kept_build[0]
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == REPO_ID
    published = load_file(folder / "model.safetensors")
    assert not any("lora" in key for key in published)
    assert torch.equal(published[Q_PROJ], load_file(checkpoints["base"] / "model.safetensors")[Q_PROJ])


def test_merging_changes_the_lora_targets_and_takes_the_trained_adapter(checkpoints, merged_build):
    folder = merged_build[0]
    published = load_file(folder / "model.safetensors")
    base = load_file(checkpoints["base"] / "model.safetensors")
    adapter = load_file(checkpoints["adapter"] / "adapter_model.safetensors")
    assert not torch.allclose(published[Q_PROJ], base[Q_PROJ])
    trained_mlp = adapter["base_model.model.model.adapter.layers.0.weight"]
    assert torch.equal(published["model.adapter.layers.0.weight"], trained_mlp)


def test_folder_maps_the_auto_classes_and_names_hub_models_instead_of_machine_paths(merged_build, tiny_paths):
    folder = merged_build[0]
    config = json.loads((folder / "config.json").read_text())
    assert {"AutoConfig", "AutoModelForCausalLM"} <= set(config["auto_map"])
    assert "AutoProcessor" in json.loads((folder / "processor_config.json").read_text())["auto_map"]
    assert (config["encoder_config"]["_name_or_path"], config["text_config"]["_name_or_path"]) == NAMES
    texts = [p.read_text() for p in folder.rglob("*.json") if p.name != "tokenizer.json"]
    assert not any(str(Path(tiny_paths[0]).parent) in text for text in texts)
    assert ModelCard.load(folder / "README.md").data.base_model == list(NAMES)


def test_folder_holds_code_processor_settings_and_generation_config(merged_build):
    folder = merged_build[0]
    for name in ("configuration_e2llm.py", "modeling_e2llm.py", "processing_e2llm.py", "generation_config.json",
                 "tokenizer.json", "encoder_tokenizer/tokenizer.json", "README.md"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "processor_config.json").read_text())["chunk_size"] == 64


def test_demo_folder_format_is_published_with_its_settings_and_adapter_merged(checkpoints, tiny_paths, tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in upload.ADAPTER_FILES:
        (demo / name).write_bytes((checkpoints["adapter"] / name).read_bytes())
    encoder, decoder = tiny_paths
    (demo / "demo.json").write_text(json.dumps({
        "config": {"encoder_path": encoder, "decoder_path": decoder},
        "processor": {"encoder_path": encoder, "decoder_path": decoder, "chunk_size": 96}}))
    build(demo, tmp_path / "out")
    published = load_file(tmp_path / "out" / "model.safetensors")
    trained_mlp = load_file(demo / "adapter_model.safetensors")["base_model.model.model.adapter.layers.0.weight"]
    assert torch.equal(published["model.adapter.layers.0.weight"], trained_mlp)
    assert json.loads((tmp_path / "out" / "processor_config.json").read_text())["chunk_size"] == 96


def test_a_build_that_fails_midway_leaves_neither_the_folder_nor_a_partial_one(checkpoints, tmp_path):
    with mock.patch.object(ModelCard, "save", side_effect=OSError("No space left on device")):
        with pytest.raises(OSError, match="No space left"):
            build(checkpoints["adapter"], tmp_path / "out", base=checkpoints["base"])
    assert list(tmp_path.iterdir()) == []


# --- checkpoint errors -------------------------------------------------------------------------------
def test_adapter_folder_without_its_weights_is_refused_naming_the_missing_file(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(PublishError, match="lacks adapter_model.safetensors"):
        upload.load_checkpoint(tmp_path)


def test_saved_model_folder_without_processor_is_refused_naming_the_missing_files(checkpoints, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((checkpoints["base"] / name).read_bytes())
    with pytest.raises(PublishError, match="lacks processor_config.json, tokenizer_config.json"):
        upload.load_checkpoint(tmp_path)


def test_folder_without_any_checkpoint_is_refused(tmp_path):
    with pytest.raises(PublishError, match="holds no checkpoint"):
        upload.load_checkpoint(tmp_path)


def test_keep_lora_on_an_already_merged_checkpoint_is_refused(checkpoints, tmp_path):
    checkpoint = upload.load_checkpoint(checkpoints["base"])
    with pytest.raises(PublishError, match="--keep-lora needs an adapter"):
        upload.build_folder(checkpoint, tmp_path / "out", REPO_ID, NAMES, ModelCard("---\n---\n"), keep_lora=True)
    assert not (tmp_path / "out").exists()


def test_models_loaded_from_local_folders_need_hub_names(checkpoints):
    config = upload.load_checkpoint(checkpoints["base"]).model.config
    with pytest.raises(PublishError, match="--encoder-name"):
        upload.hub_names(config, None, "org/decoder")
    assert upload.hub_names(config, *NAMES) == NAMES


def test_output_folder_with_files_is_refused_before_anything_is_loaded(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with mock.patch.object(upload, "load_checkpoint") as load:
        code = upload.main(["--repo-id", REPO_ID, "--dry-run", "--output-dir", str(tmp_path / "out")])
    assert code == 1 and load.call_count == 0
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --- the command line and the upload -----------------------------------------------------------------
def test_dry_run_builds_and_checks_the_folder_prints_files_and_card_and_uploads_nothing(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    with mock.patch.object(upload, "HfApi") as hf_api:
        code = upload.main(["--repo-id", REPO_ID, "--checkpoint", str(checkpoints["adapter"]), "--base",
                            str(checkpoints["base"]), "--encoder-name", NAMES[0], "--decoder-name", NAMES[1],
                            "--output-dir", str(out), "--dry-run"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert hf_api.mock_calls == []
    assert f"{upload._size((out / 'model.safetensors').stat().st_size)}  model.safetensors" in printed.out
    assert (out / "README.md").read_text() in printed.out
    assert "Loading the folder in a fresh process" in printed.err


@pytest.fixture
def hub(monkeypatch):
    """HfApi replaced by a mock that records every call; a token is available."""
    monkeypatch.setattr(upload, "get_token", lambda: "hf_test_token")
    with mock.patch.object(upload, "HfApi") as hf_api:
        yield hf_api


def conflict() -> HfHubHTTPError:
    return HfHubHTTPError("409 Conflict: You already created this model repo",
                          response=mock.Mock(status_code=409, headers={}, request=None))


def test_upload_creates_the_repository_once_and_uploads_the_folder_in_one_commit(merged_build, hub):
    folder = merged_build[0]
    upload.publish(folder, REPO_ID, "hf_test_token", private=True)
    hub.assert_called_once_with(token="hf_test_token")
    api = hub.return_value
    assert api.method_calls == [
        mock.call.create_repo(REPO_ID, private=True, exist_ok=False),
        mock.call.upload_folder(repo_id=REPO_ID, folder_path=str(folder), revision=None,
                                commit_message=mock.ANY, delete_patterns=None)]


def test_from_folder_uploads_an_existing_build_without_rebuilding(merged_build, hub):
    folder = merged_build[0]
    with mock.patch.object(upload, "load_checkpoint") as load:
        assert upload.main(["--repo-id", REPO_ID, "--from-folder", str(folder)]) == 0
    assert load.call_count == 0
    assert [c[0] for c in hub.return_value.method_calls] == ["create_repo", "upload_folder"]
    assert hub.return_value.upload_folder.call_args.kwargs["folder_path"] == str(folder)


def test_from_folder_refuses_build_arguments_it_would_ignore(merged_build, hub, capsys):
    code = upload.main(["--repo-id", REPO_ID, "--from-folder", str(merged_build[0]), "--checkpoint", "x"])
    assert code == 1 and hub.return_value.method_calls == []
    assert "--checkpoint would be ignored" in capsys.readouterr().err


def test_revision_creates_its_branch_before_the_upload(merged_build, hub):
    upload.publish(merged_build[0], REPO_ID, "hf_test_token", revision="v1")
    calls = hub.return_value.method_calls
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[1] == mock.call.create_branch(REPO_ID, branch="v1", exist_ok=True)
    assert calls[2].kwargs["revision"] == "v1"


def test_no_token_is_refused_before_building_and_nothing_is_contacted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(upload, "get_token", lambda: None)
    with mock.patch.object(upload, "HfApi") as hf_api, mock.patch.object(upload, "load_checkpoint") as load:
        code = upload.main(["--repo-id", REPO_ID, "--output-dir", str(tmp_path / "out")])
    assert code == 1
    assert "No Hugging Face token: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert hf_api.mock_calls == [] and load.call_count == 0 and not (tmp_path / "out").exists()


def test_publish_without_a_token_contacts_nothing(merged_build, monkeypatch):
    monkeypatch.setattr(upload, "get_token", lambda: None)
    with mock.patch.object(upload, "HfApi") as hf_api:
        with pytest.raises(PublishError, match="No Hugging Face token"):
            upload.publish(merged_build[0], REPO_ID)
    assert hf_api.mock_calls == []


def test_existing_repository_without_overwrite_is_refused_and_nothing_is_uploaded(merged_build, hub):
    hub.return_value.create_repo.side_effect = conflict()
    with pytest.raises(PublishError, match=f"repository {REPO_ID} already exists. Pass --overwrite"):
        upload.publish(merged_build[0], REPO_ID, "hf_test_token")
    assert hub.return_value.upload_folder.call_count == 0


def test_overwrite_replaces_the_repository_files_in_one_commit(merged_build, hub):
    upload.publish(merged_build[0], REPO_ID, "hf_test_token", overwrite=True)
    api = hub.return_value
    api.create_repo.assert_called_once_with(REPO_ID, private=False, exist_ok=True)
    assert api.upload_folder.call_count == 1
    assert api.upload_folder.call_args.kwargs["delete_patterns"] == "*"


@pytest.mark.parametrize("failure", [OfflineModeIsEnabled("offline mode is enabled"), ConnectionError("refused")])
def test_unreachable_hub_keeps_the_folder_and_prints_the_retry_command(merged_build, hub, failure):
    folder = merged_build[0]
    hub.return_value.create_repo.side_effect = failure
    with pytest.raises(PublishError) as raised:
        upload.publish(folder, REPO_ID, "hf_test_token", private=True)
    message = str(raised.value)
    assert message.startswith("Could not reach the Hugging Face Hub")
    assert f"repository {REPO_ID} was not created" in message
    assert f"python upload.py --repo-id {REPO_ID} --from-folder {folder} --private" in message
    assert (folder / "model.safetensors").is_file()


def test_failed_upload_after_creation_says_the_repository_is_empty_and_retries_with_overwrite(merged_build, hub):
    folder = merged_build[0]
    hub.return_value.upload_folder.side_effect = OfflineModeIsEnabled("offline mode is enabled")
    with pytest.raises(PublishError, match="was created but holds no files") as raised:
        upload.publish(folder, REPO_ID, "hf_test_token")
    assert str(raised.value).endswith(f"--from-folder {folder} --overwrite")


def test_connection_errors_of_the_hub_client_count_as_unreachable():
    with pytest.raises(Exception) as raised:
        get_session().get("http://127.0.0.1:9/api/repos/create", timeout=5)  # nothing listens on port 9
    assert isinstance(raised.value, upload._network_errors())
