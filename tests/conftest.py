"""Shared fixtures: tiny random encoder/decoder folders with the embedded default's real tokenizers."""

import atexit
import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import AutoTokenizer, BertModel, LlamaForCausalLM  # noqa: E402

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor  # noqa: E402
from modeling_e2llm.embedded_default import default_decoder_path, default_encoder_path  # noqa: E402
from training.architectures import TINY_DECODER, TINY_ENCODER  # noqa: E402


class HostReads(TorchDispatchMode):
    """Records the ops that read tensor values back to the host (`.item()`, `bool()`, `int()`, boolean indexing
    and other data-dependent shapes): on an accelerator each one waits for the device to catch up."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_dim",
             "unique_consecutive", "bincount", "histc", "repeat_interleave"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.READS:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def build_tiny_encoder(folder: Path, pooling: str = "mean") -> Path:
    """BERT with hidden size 32 and the all-MiniLM-L6-v2 tokenizer, saved like a sentence-transformers folder."""
    torch.manual_seed(0)
    BertModel(copy.deepcopy(TINY_ENCODER), add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
    return folder


def build_tiny_decoder(folder: Path) -> Path:
    """Llama with hidden size 48 and the SmolLM2 tokenizer (ChatML template)."""
    torch.manual_seed(1)
    LlamaForCausalLM(copy.deepcopy(TINY_DECODER)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_decoder_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    encoder = build_tiny_encoder(root / "encoder")
    decoder = build_tiny_decoder(root / "decoder")
    return str(encoder), str(decoder)


@pytest.fixture
def tiny_model(tiny_paths) -> E2LLMForCausalLM:
    torch.manual_seed(2)
    return E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths).eval()


@pytest.fixture
def tiny_processor(tiny_paths) -> E2LLMProcessor:
    return E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64)


@pytest.fixture
def tiny_at(tiny_paths):
    """`build(k)` -> (model, processor) with the compression setting k (encoder_tokens_per_chunk_token): the
    weights of `tiny_model` (same seed), the chunking of `tiny_processor` unless `chunk_size` says otherwise
    (64 characters make 8-14 encoder tokens: k=16 needs longer chunks to make more than one chunk token)."""
    def build(k: int | None, chunk_size: int = 64) -> tuple[E2LLMForCausalLM, E2LLMProcessor]:
        torch.manual_seed(2)
        model = E2LLMForCausalLM.from_encoder_decoder_pretrained(*tiny_paths, encoder_tokens_per_chunk_token=k)
        processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=chunk_size,
                                                                   encoder_tokens_per_chunk_token=k)
        return model.eval(), processor
    return build


@pytest.fixture(scope="session")
def essay_text() -> str:
    """A real Paul Graham essay (about 20k characters) from ../shared/data."""
    path = ROOT.parent / "shared" / "data" / "pg_essays" / "essays.jsonl"
    with open(path) as f:
        essays = [json.loads(line)["context"] for line in f]
    return max(essays, key=len)


MODEL_RUNTIME = ("torch", "transformers", "safetensors", "tokenizers")  # all a saved folder may need


def _with_dependencies(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `names` and, recursively, what they require (extras left out)."""
    found, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a dependency of another platform or build (e.g. CUDA libraries)
            continue
        for requirement in map(Requirement, found[name].requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


@functools.cache
def bare_python() -> Path:
    """Python of a fresh virtualenv that holds only the model runtime (MODEL_RUNTIME and its dependencies,
    linked from this environment): no peft, no trl, no project, as on a user's machine that only has
    transformers."""
    root = Path(tempfile.mkdtemp(prefix="e2llm-bare-venv-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    for dist in _with_dependencies(MODEL_RUNTIME):
        for top in {Path(file).parts[0] for file in dist.files or [] if not str(file).startswith("..")}:
            if top != "__pycache__" and not (site / top).exists():
                (site / top).symlink_to(dist.locate_file(top))
    return python


def run_isolated(code: str, cwd: Path, bare: bool = True) -> str:
    """Run `code` in a fresh Python; return its stdout, failing the test with stderr on error.

    With `bare`, in `bare_python()`'s virtualenv (only the model runtime, the project not on its path);
    without, in this environment with the project importable from the repository root.
    """
    python, preamble = (bare_python(), "") if bare else (sys.executable, f"import sys; sys.path.insert(0, {str(ROOT)!r})\n")
    result = subprocess.run([python, "-c", preamble + code], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def greedy(model, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy `model.generate(**kwargs)`: the sequences (B, T') and the logits each new token was chosen from,
    (new tokens, B, vocab). The tiny random decoder says "\\n" whatever it reads, so equal tokens alone prove
    little: a test that two paths agree compares these logits too (they move by ~0.08 with the context)."""
    out = model.generate(do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.logits)


def assert_same_greedy_answers(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
                               atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """`greedy`'s outputs of two paths agree: the same tokens, chosen from the same logits."""
    assert first[0].tolist() == second[0].tolist()
    torch.testing.assert_close(first[1], second[1], atol=atol, rtol=rtol)
