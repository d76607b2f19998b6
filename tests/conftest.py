"""Shared fixtures: tiny random encoder/decoder folders with the embedded default's real tokenizers."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor  # noqa: E402
from modeling_e2llm.embedded_default import default_decoder_path, default_encoder_path  # noqa: E402


def build_tiny_encoder(folder: Path, pooling: str = "mean") -> Path:
    """BERT with hidden size 32 and the all-MiniLM-L6-v2 tokenizer, saved like a sentence-transformers folder."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
    return folder


def build_tiny_decoder(folder: Path) -> Path:
    """Llama with hidden size 48 and the SmolLM2 tokenizer (ChatML template)."""
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=49152, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=96, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
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


@pytest.fixture(scope="session")
def essay_text() -> str:
    """A real Paul Graham essay (about 20k characters) from ../shared/data."""
    path = ROOT.parent / "shared" / "data" / "pg_essays" / "essays.jsonl"
    with open(path) as f:
        essays = [json.loads(line)["context"] for line in f]
    return max(essays, key=len)


PROJECT_PACKAGES = ("modeling_e2llm", "training", "evaluation", "model_card", "upload")
_ISOLATION_PREAMBLE = f"""
import importlib.abc, sys
class _BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_PACKAGES!r}:
            raise ImportError(name + " is blocked: this process must not see the project")
sys.meta_path.insert(0, _BlockProject())
sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
"""


def run_isolated(code: str, cwd: Path, block_project: bool = True) -> str:
    """Run `code` in a fresh Python; return its stdout, failing the test with stderr on error.

    With `block_project`, its imports cannot reach the project (as on a user's machine that only has
    transformers); without, the project is importable from the repository root.
    """
    import subprocess

    preamble = _ISOLATION_PREAMBLE if block_project else f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
    result = subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, text=True,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
