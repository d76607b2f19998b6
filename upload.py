r"""Publish an E2LLM to the Hugging Face Hub: build a self-contained repository folder, then upload it in one commit.

Anyone with `pip install transformers peft torch` can then run
`AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True).generate(context=..., prompt=...)`.

Checkpoints (`--checkpoint DIR`):
  (a) a saved E2LLM folder: `model.save_pretrained(DIR)` and `processor.save_pretrained(DIR)` (config.json
      with model_type "e2llm", model.safetensors, processor_config.json, both tokenizers). Published as it
      is: LoRA, if any, is already merged.
  (b) a peft adapter folder: adapter_config.json + adapter_model.safetensors, saved from a `PeftModel`
      around an E2LLM (`modeling_e2llm.lora.lora_config(model.config)`). The base is the saved E2LLM folder given with `--base`,
      else the embedded default. The processor is the one saved in DIR when there is one, else the base's.
  (c) a demo folder (`modeling_e2llm.loading.load_model`): the adapter files of (b)
      plus demo.json, {"config": {...}, "processor": {...}}: the keyword arguments of
      `from_encoder_decoder_pretrained` for the model and the processor.
  No `--checkpoint`: the embedded default with the demo weights of modeling_e2llm/demo when present,
  else with an untrained adapter (the card then says so in its first lines).

The folder holds config.json (`auto_map` for AutoConfig and AutoModelForCausalLM), the model code
files, model.safetensors, generation_config.json, the processor (processor_config.json with its
`auto_map` for AutoProcessor, both tokenizers, the chunking and prompt settings) and README.md, the
model card. An adapter is merged by default (`PeftModel.from_pretrained(base, DIR).merge_and_unload()`);
`--keep-lora` publishes the base weights plus adapter_config.json / adapter_model.safetensors
instead, which transformers applies on load (the adapter's `base_model_name_or_path` is the repository
itself). Encoder and decoder appear under their Hub ids (`--encoder-name` / `--decoder-name` when the
checkpoint was built from local folders other than the embedded default's), never as machine paths.

Before anything is uploaded the folder is loaded in a fresh Python process that cannot import this
project, and its greedy answer to a probe question must equal the in-process model's.

Upload: `HfApi.create_repo` (fails if the repository exists, unless `--overwrite`), then one
`upload_folder` commit; with `--overwrite`, files of the repository that the folder lacks are deleted
in that same commit. `--revision BRANCH` creates the branch first. The token comes from `HF_TOKEN` or
`hf auth login`. `--dry-run` builds and checks the folder, prints its files and the card, uploads nothing.

Card inputs (all optional; shapes in model_card/card.py): `--eval-summary` the harness's summary.json
files (`--system` names this model's when baselines are among them), `--training-summary` the training
config and/or log_history.json, `--efficiency` a JSON of timings, `--dataset` Hub ids of training data.

Examples:
  python upload.py --repo-id me/e2llm-demo --checkpoint modeling_e2llm/demo --dry-run
  python upload.py --repo-id me/e2llm-qmsum --checkpoint runs/qmsum/final \
      --training-summary configs/qmsum.yaml runs/qmsum/final/log_history.json \
      --eval-summary runs/eval/*/summary.json --system e2llm
  python upload.py --repo-id me/e2llm-qmsum --from-folder runs/hub/e2llm-qmsum     # retry an upload
"""

import argparse
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from model_card import (CardInputError, about_text, build_model_card, load_efficiency, load_eval_summary,
                        load_training_summary, model_facts)
from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.embedded_default import (DECODER_HUB_ID, ENCODER_HUB_ID, default_decoder_path,
                                             default_encoder_path)
from modeling_e2llm.loading import DEMO_DIR, is_trained_run, load_model, trained_run_base

EMBEDDED_DEFAULT_NAMES = (ENCODER_HUB_ID, DECODER_HUB_ID)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = ("config.json", "processor_config.json", "tokenizer_config.json",
               "encoder_tokenizer/tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Tokenizer settings that describe the machine that saved the files, not the model.
MACHINE_SETTINGS = ("is_local", "local_files_only")
# Arguments that describe a build, which --from-folder skips.
BUILD_ARGUMENTS = ("checkpoint", "base", "keep_lora", "encoder_name", "decoder_name", "eval_summary", "system",
                   "training_summary", "efficiency", "dataset", "output_dir")
PROBE_PROMPT = "What does the encoder turn every chunk into?"
PROBE_NEW_TOKENS = 8


class PublishError(Exception):
    """A problem the user can fix; the message says what went wrong and what to do."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (complete, or the base of `adapter_dir`) and its processor."""

    model: E2LLMForCausalLM
    processor: E2LLMProcessor
    adapter_dir: Path | None = None
    trained: bool = True


# --- reading checkpoints -------------------------------------------------------------------------
def checkpoint_format(path: Path) -> str:
    """'model' (a), 'adapter' (b) or 'demo' (c), after checking that the format's files are all there."""
    if not path.is_dir():
        raise PublishError(f"Checkpoint {path} is not a folder.")
    if (path / "demo.json").exists():
        kind, required = "demo", ADAPTER_FILES
    elif (path / "adapter_config.json").exists():
        kind, required = "adapter", ADAPTER_FILES
    elif (path / "config.json").exists():
        kind, required = "model", MODEL_FILES
    else:
        raise PublishError(f"{path} holds no checkpoint: expected config.json (a saved E2LLM folder), "
                           "adapter_config.json (a peft adapter) or demo.json (a demo folder).")
    model_type = json.loads((path / "config.json").read_text()).get("model_type") if kind == "model" else "e2llm"
    if model_type != "e2llm":
        raise PublishError(f"{path} holds a {model_type!r} model, not an E2LLM: train one from it with "
                           "python -m training.train (model.decoder or model.encoder) and publish its final/ folder.")
    missing = [name for name in required if not (path / name).exists()]
    if kind == "model" and not any((path / name).exists() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        described = {"model": "saved E2LLM folder", "adapter": "peft adapter folder", "demo": "demo folder"}[kind]
        raise PublishError(f"Checkpoint {path} looks like a {described} but lacks {', '.join(missing)}. "
                           "Save it again (model.save_pretrained + processor.save_pretrained, or "
                           "peft_model.save_pretrained) or point --checkpoint at the complete folder.")
    return kind


def load_checkpoint(path: str | Path | None, base: str | Path | None = None) -> Checkpoint:
    """Load any of the formats in the module docstring (None: the embedded default)."""
    try:
        return _load_checkpoint(path, base)
    except (OSError, ValueError) as error:  # damaged weights, moved model folders: the reason without a traceback
        raise PublishError(f"Checkpoint {path or DEMO_DIR} does not load: {error}") from error


def _load_checkpoint(path: str | Path | None, base: str | Path | None) -> Checkpoint:
    if path is None:
        if is_trained_run(DEMO_DIR):
            return _load_checkpoint(DEMO_DIR, None)
        model, processor, _ = load_model(trained=False)
        return Checkpoint(model, processor, trained=False)
    path = Path(path)
    kind = checkpoint_format(path)
    if base is not None and kind != "adapter":
        raise PublishError(f"--base applies to a peft adapter folder, but {path} is a {kind} checkpoint.")
    if kind == "model":
        model, processor, _ = load_model(path)
        return Checkpoint(model, processor)
    if kind == "demo":
        model, processor = trained_run_base(path)
        return Checkpoint(model.eval(), processor, adapter_dir=path)
    if base is not None:
        if checkpoint_format(Path(base)) != "model":
            raise PublishError(f"--base {base} must be a saved E2LLM folder (format a), not an adapter.")
        model, processor, _ = load_model(base)
    else:
        model, processor, _ = load_model(trained=False)
    if (path / "processor_config.json").exists():
        processor = E2LLMProcessor.from_pretrained(path)
    return Checkpoint(model.eval(), processor, adapter_dir=path)


def hub_names(config, encoder_name: str | None, decoder_name: str | None) -> tuple[str, str]:
    """Hub ids of the encoder and the decoder: the names given, else those the sub-configs record."""
    return (encoder_name or _hub_name(config.encoder_config._name_or_path, "encoder", 0),
            decoder_name or _hub_name(config.text_config._name_or_path, "decoder", 1))


def _hub_name(source: str, part: str, index: int) -> str:
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source or "") and not os.path.exists(source):
        return source  # already a Hub id
    try:
        default = (default_encoder_path, default_decoder_path)[index]()
        if source and os.path.realpath(source) == os.path.realpath(default):
            return EMBEDDED_DEFAULT_NAMES[index]
    except FileNotFoundError:  # embedded default not installed: the source cannot be it
        pass
    raise PublishError(f"The {part} was loaded from {source!r}, which is not a Hub id: name it with "
                       f"--{part}-name ORG/NAME (e.g. {EMBEDDED_DEFAULT_NAMES[index]}).")


# --- building the folder -------------------------------------------------------------------------
def build_folder(checkpoint: Checkpoint, output_dir: str | Path, repo_id: str, names: tuple[str, str],
                 card: ModelCard, keep_lora: bool = False):
    """Write the repository folder; return the in-process model it holds (merged, or with its adapter).

    The folder is built beside `output_dir` and renamed into place only when complete, so it either
    holds everything or does not exist.
    """
    if keep_lora and checkpoint.adapter_dir is None:
        raise PublishError("--keep-lora needs an adapter checkpoint (formats b and c); this one is already merged.")
    output_dir = Path(output_dir)
    config = checkpoint.model.config
    machine_paths = _machine_paths(config.encoder_config._name_or_path, config.text_config._name_or_path,
                                   config.name_or_path, checkpoint.adapter_dir)
    config.encoder_config._name_or_path, config.text_config._name_or_path = names  # saved in config.json
    with _staging(output_dir) as staging:
        model = checkpoint.model
        if checkpoint.adapter_dir is not None and not keep_lora:
            model = _with_adapter(model, checkpoint.adapter_dir).merge_and_unload()
        model.save_pretrained(staging)  # with --keep-lora: the base, saved before the adapter wraps it
        if keep_lora:
            _copy_adapter(checkpoint.adapter_dir, staging, repo_id)
            model = _with_adapter(model, checkpoint.adapter_dir)
        checkpoint.processor.save_pretrained(staging)
        _drop_machine_settings(staging)
        card.save(staging / "README.md")
        check_folder(staging, machine_paths)
    return model.eval()


def check_output_dir(output_dir: Path) -> None:
    """Refuse to build into a folder that holds files (a previous build, or anything else)."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise PublishError(f"Output folder {output_dir} already exists and is not empty: remove it, pass another "
                           f"--output-dir, or upload it as it is with --from-folder {output_dir}.")


@contextmanager
def _staging(output_dir: Path):
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted build of a process with our pid
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output_dir.exists():
        output_dir.rmdir()  # empty, checked above
    staging.rename(output_dir)


def _with_adapter(model, adapter_dir: Path):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as error:  # shape or module mismatch: another base
        raise PublishError(f"The adapter in {adapter_dir} does not fit the base model ({error}). "
                           "Pass the E2LLM folder it was trained on with --base.") from error


def _copy_adapter(adapter_dir: Path, folder: Path, repo_id: str) -> None:
    shutil.copyfile(adapter_dir / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    # transformers loads the base named here, then the adapter: the base is this repository's own weights.
    config["base_model_name_or_path"] = repo_id
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _drop_machine_settings(folder: Path) -> None:
    for path in folder.rglob("tokenizer_config.json"):
        settings = json.loads(path.read_text())
        if any(key in settings for key in MACHINE_SETTINGS):
            kept = {key: value for key, value in settings.items() if key not in MACHINE_SETTINGS}
            path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def _machine_paths(*sources: str | Path | None) -> set[str]:
    """Local paths that must not leak into the published files: the home folder, this project, and
    the folders that `sources` (where the model's parts were loaded from) name."""
    paths = {str(Path.home())}
    for source in (*sources, Path(__file__).resolve().parent):
        if source and os.path.exists(source):
            paths |= {os.path.abspath(source), os.path.realpath(source)}
    return {path for path in paths if len(path) > 1}  # a home of "/" would match every path


def check_folder(folder: Path, machine_paths: set[str] = frozenset()) -> None:
    """Raise unless `folder` has the Auto-class maps, the card, weights, and no machine paths."""
    config = json.loads((folder / "config.json").read_text())
    processor_config = json.loads((folder / "processor_config.json").read_text())
    auto_map = {**config.get("auto_map", {}), **processor_config.get("auto_map", {})}
    missing = [name for name in ("AutoConfig", "AutoModelForCausalLM", "AutoProcessor") if name not in auto_map]
    if missing:
        raise PublishError(f"The folder's auto_map lacks {missing}: the model code did not register its Auto classes.")
    if not (folder / "README.md").exists() or not any((folder / name).exists() for name in WEIGHT_FILES):
        raise PublishError(f"{folder} lacks README.md or the model weights: it is not a complete build.")
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".md", ".py", ".jinja") and path.name != "tokenizer.json":
            text = path.read_text(encoding="utf-8")
            leaked = sorted(p for p in machine_paths if p in text)
            if leaked:
                raise PublishError(f"{path.relative_to(folder)} contains the local path(s) {leaked}: name the models "
                                   "with --encoder-name / --decoder-name, and keep paths out of the card's inputs.")


# --- checking that the folder loads on its own ---------------------------------------------------
_FRESH_LOAD_SCRIPT = """
import json, sys
sys.modules.update(modeling_e2llm=None, model_card=None)  # the folder alone must be enough
from transformers import AutoModelForCausalLM, AutoProcessor
folder, context, prompt, new_tokens = json.loads(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
ids = model.generate(context=context, prompt=prompt, processor=processor, max_new_tokens=new_tokens, do_sample=False)
print(json.dumps(ids.tolist()))
"""


def check_fresh_load(folder: Path, model, processor, context: str) -> list[list[int]]:
    """Load `folder` with the Auto classes in a new process outside this project; its greedy answer
    to a probe question about `context` must equal `model`'s. Returns the generated ids."""
    expected = model.generate(context=context, prompt=PROBE_PROMPT, processor=processor,
                              max_new_tokens=PROBE_NEW_TOKENS, do_sample=False).tolist()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as empty_dir:  # cwd goes on sys.path: keep the project off it
        argument = json.dumps([str(Path(folder).resolve()), context, PROBE_PROMPT, PROBE_NEW_TOKENS])
        result = subprocess.run([sys.executable, "-c", _FRESH_LOAD_SCRIPT, argument], cwd=empty_dir, env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise PublishError(f"The built folder {folder} does not load in a fresh process:\n{result.stderr[-2000:]}")
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    if fresh != expected:
        raise PublishError(f"The built folder {folder} loads, but generates {fresh} where the model in this "
                           f"process generates {expected}: the saved weights or settings differ.")
    return fresh


# --- uploading -----------------------------------------------------------------------------------
def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not be reached" for the HTTP client huggingface_hub uses."""
    errors = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled is a ConnectionError
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            pass
    return tuple(errors)


def _status(error: HfHubHTTPError) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def retry_command(repo_id: str, folder: Path, private: bool, revision: str | None, overwrite: bool) -> str:
    """The command that uploads an already built folder."""
    command = ["python", "upload.py", "--repo-id", repo_id, "--from-folder", str(folder)]
    command += ["--private"] * private + ["--revision", revision] * bool(revision) + ["--overwrite"] * overwrite
    return shlex.join(command)


def require_token() -> str:
    """The token of `HF_TOKEN` or `hf auth login`."""
    token = get_token()
    if not token:
        raise PublishError("No Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write "
                           "access (or use --dry-run to build the folder only).")
    return token


def publish(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
            revision: str | None = None, overwrite: bool = False) -> str:
    """Create `repo_id` and upload `folder` to it in one commit; return the commit's URL."""
    folder = Path(folder)
    api = HfApi(token=token or require_token())
    created = False
    try:
        api.create_repo(repo_id, private=private, exist_ok=overwrite)
        created = True
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                   commit_message="Upload E2LLM (model, code, processor, card)",
                                   delete_patterns="*" if overwrite else None)
    except (HfHubHTTPError, *_network_errors()) as error:
        if not created and _status(error) == 409:
            raise PublishError(
                f"The repository {repo_id} already exists. Pass --overwrite to replace its files with this "
                f"folder in one commit: {retry_command(repo_id, folder, private, revision, True)}") from error
        unreachable = not isinstance(error, HfHubHTTPError) or _status(error) is None
        what = "Could not reach the Hugging Face Hub" if unreachable else "The Hugging Face Hub refused the upload"
        state = (f"The repository {repo_id} was created but holds no files yet." if created
                 else f"The repository {repo_id} was not created.")
        raise PublishError(f"{what} ({type(error).__name__}: {error}). Nothing was uploaded. {state} "
                           f"The built folder is kept at {folder}; once fixed, retry with:\n  "
                           f"{retry_command(repo_id, folder, private, revision, overwrite or created)}") from error
    return commit.commit_url


# --- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="ORG/NAME of the Hub repository")
    parser.add_argument("--checkpoint", help="checkpoint folder, formats (a)-(c) above (default: embedded default)")
    parser.add_argument("--base", help="saved E2LLM folder that the adapter of --checkpoint was trained on")
    parser.add_argument("--keep-lora", action="store_true", help="publish base + LoRA adapter instead of merging")
    parser.add_argument("--encoder-name", help="Hub id of the chunk encoder (default: read from the checkpoint)")
    parser.add_argument("--decoder-name", help="Hub id of the decoder LLM (default: read from the checkpoint)")
    parser.add_argument("--eval-summary", nargs="+", action="extend", default=[], metavar="FILE",
                        help="summary.json files of the evaluation harness")
    parser.add_argument("--system", help="this model's system name in the summaries, when they hold baselines too")
    parser.add_argument("--training-summary", nargs="+", action="extend", default=[], metavar="FILE",
                        help="training config (YAML/JSON) and/or the trainer's log_history.json")
    parser.add_argument("--efficiency", metavar="FILE", help="efficiency figures (JSON mapping or list of rows)")
    parser.add_argument("--dataset", action="append", default=[], help="Hub id of a training data set (repeatable)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--output-dir", help="where to build the folder (default: runs/hub/NAME)")
    parser.add_argument("--from-folder", help="upload this already built folder instead of building one")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="branch to upload to (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing repository")
    parser.add_argument("--dry-run", action="store_true", help="build and show the folder, upload nothing")
    parser.add_argument("--skip-load-check", action="store_true", help="skip loading the folder in a fresh process")
    return parser.parse_args(argv)


def build_from_args(args: argparse.Namespace) -> Path:
    """Build (and check) the folder that the arguments describe; return its path."""
    output_dir = Path(args.output_dir or Path("runs") / "hub" / args.repo_id.split("/")[-1])
    check_output_dir(output_dir)  # before the slow loading
    evaluations = [load_eval_summary(path) for path in args.eval_summary]
    training = {key: value for path in args.training_summary for key, value in load_training_summary(path).items()}
    efficiency = load_efficiency(args.efficiency) if args.efficiency else None
    checkpoint = load_checkpoint(args.checkpoint, args.base)
    if not checkpoint.trained:
        print("Note: no trained weights (no --checkpoint and no modeling_e2llm/demo): publishing the untrained "
              "embedded default; the card says so.", file=sys.stderr)
    names = hub_names(checkpoint.model.config, args.encoder_name, args.decoder_name)
    facts = model_facts(checkpoint.model, checkpoint.processor, args.repo_id, *names,
                        trained=checkpoint.trained, lora_merged=not args.keep_lora)
    card = build_model_card(facts, evaluations, training, efficiency, license=args.license,
                            datasets=args.dataset, system=args.system)
    model = build_folder(checkpoint, output_dir, args.repo_id, names, card, keep_lora=args.keep_lora)
    if not args.skip_load_check:
        print("Loading the folder in a fresh process...", file=sys.stderr)
        check_fresh_load(output_dir, model, checkpoint.processor, context=about_text())
    return output_dir


def describe_folder(folder: Path) -> str:
    """One line per file with its size, then the total."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = [f"{_size(p.stat().st_size):>10}  {p.relative_to(folder)}" for p in files]
    return "\n".join(lines + [f"{_size(sum(p.stat().st_size for p in files)):>10}  total, {len(files)} files"])


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        validate_repo_id(args.repo_id)
        token = None if args.dry_run else require_token()  # before the slow build
        if args.from_folder:
            folder = Path(args.from_folder)
            building = [f"--{name.replace('_', '-')}" for name in BUILD_ARGUMENTS if getattr(args, name)]
            if building:
                raise PublishError(f"--from-folder uploads a folder as it is; {', '.join(building)} would be ignored.")
            if not (folder / "config.json").is_file():
                raise PublishError(f"--from-folder {folder} holds no built model (no config.json).")
            check_folder(folder, _machine_paths())
        else:
            folder = build_from_args(args)
        print(f"Folder {folder}:\n{describe_folder(folder)}")
        if args.dry_run:
            print(f"\n--- README.md ---\n{(folder / 'README.md').read_text()}\n--- end of README.md ---")
            print(f"Dry run: nothing uploaded. To upload this folder: "
                  f"{retry_command(args.repo_id, folder, args.private, args.revision, args.overwrite)}")
            return 0
        url = publish(folder, args.repo_id, token, private=args.private, revision=args.revision,
                      overwrite=args.overwrite)
        print(f"Uploaded to {url}")
        return 0
    except (PublishError, CardInputError, HFValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
