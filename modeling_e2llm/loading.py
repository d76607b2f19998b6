"""The one loader of the project's commands: any E2LLM they accept, as `(model, processor, description)`.

Not a model file (saved folders never hold it). A source is
- None: the embedded default (all-MiniLM-L6-v2 + SmolLM2-135M-Instruct from pip packages) with the shipped
  demo weights of `modeling_e2llm/demo/`, or with an untrained adapter (`trained=False`);
- a trained run: a training run's `final/` folder, or the demo folder. It holds what training changed (LoRA and
  the adapter, saved by peft) and `demo.json`: the encoder, decoder, config and processor
  settings the run was trained with, from which its base is composed again;
- a folder written by `save_pretrained` (model and processor), or the Hub id of one.
"""

import json
import warnings
from pathlib import Path

from .embedded_default import DECODER_HUB_ID, ENCODER_HUB_ID, default_decoder_path, default_encoder_path
from .modeling_e2llm import E2LLMForCausalLM
from .processing_e2llm import E2LLMProcessor

DEMO_DIR = Path(__file__).resolve().parent / "demo"
RUN_SETTINGS_FILE = "demo.json"  # what training.train writes beside the LoRA files of a trained run


def load_model(source: str | Path | None = None, trained: bool = True,
               fast_encoder: bool = False) -> tuple[E2LLMForCausalLM, E2LLMProcessor, str]:
    """`(model, processor, description)`: the model merged and in eval mode, and what it is in words (an
    untrained adapter says so). `trained=False` applies to the embedded default only. `fast_encoder`: the int8
    CPU encoder path (`E2LLMForCausalLM.quantize_encoder`), said in the description."""
    model, processor, description = _load(source, trained)
    if fast_encoder:
        model, description = model.quantize_encoder(), f"{description}, int8 encoder"
    return model, processor, description


def _load(source: str | Path | None, trained: bool) -> tuple[E2LLMForCausalLM, E2LLMProcessor, str]:
    if source is None:
        if trained and is_trained_run(DEMO_DIR):
            model, processor = load_trained_run(DEMO_DIR)
            return model, processor, "embedded default with the demo weights"
        return compose_model().eval(), compose_processor(), "embedded default (UNTRAINED adapter)"
    if is_trained_run(source):
        model, processor = load_trained_run(source)
        return model, processor, f"trained run {Path(source).name}"
    model = E2LLMForCausalLM.from_pretrained(source).eval()
    return model, E2LLMProcessor.from_pretrained(source), Path(str(source)).name or str(source)


def is_trained_run(source: str | Path) -> bool:
    """True for a folder holding a trained run's LoRA files and settings (see the module docstring)."""
    return (Path(source) / RUN_SETTINGS_FILE).is_file()


def trained_run_base(run_dir: str | Path) -> tuple[E2LLMForCausalLM, E2LLMProcessor]:
    """The untrained composite and processor a trained run started from, rebuilt from its settings."""
    settings = json.loads((Path(run_dir) / RUN_SETTINGS_FILE).read_text())
    return compose_model_and_processor(settings.get("config", {}), settings.get("processor", {}))


def load_trained_run(run_dir: str | Path) -> tuple[E2LLMForCausalLM, E2LLMProcessor]:
    """A trained run's base with its LoRA and adapter merged in, in eval mode."""
    from peft import PeftModel

    model, processor = trained_run_base(run_dir)
    with warnings.catch_warnings():
        # peft asks the model for the deprecated `is_gradient_checkpointing`; nothing for a caller to change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(run_dir)).merge_and_unload().eval(), processor


def compose_model(encoder_path: str | None = None, decoder_path: str | None = None, **config_kwargs) -> E2LLMForCausalLM:
    """A new `E2LLMForCausalLM` (untrained adapter); a missing path means the embedded default's model, which
    the config then names by its Hub id rather than by a folder on this machine."""
    return E2LLMForCausalLM.from_encoder_decoder_pretrained(
        encoder_path or default_encoder_path(), decoder_path or default_decoder_path(),
        encoder_name=None if encoder_path else ENCODER_HUB_ID, decoder_name=None if decoder_path else DECODER_HUB_ID,
        **config_kwargs)


def compose_model_and_processor(config_kwargs: dict, processor_settings: dict) -> tuple[E2LLMForCausalLM,
                                                                                       E2LLMProcessor]:
    """A new composite from `compose_model(**config_kwargs)` and its processor from
    `compose_processor(**processor_settings)`, which takes the model's `encoder_tokens_per_chunk_token` (it decides
    the placeholders): the model config is the one place a training config or a trained run sets it."""
    model = compose_model(**config_kwargs)
    k = model.config.encoder_tokens_per_chunk_token
    return model, compose_processor(**processor_settings, encoder_tokens_per_chunk_token=k)


def compose_processor(encoder_path: str | None = None, decoder_path: str | None = None, **settings) -> E2LLMProcessor:
    """A new `E2LLMProcessor`; a missing path means the embedded default's tokenizer."""
    return E2LLMProcessor.from_encoder_decoder_pretrained(encoder_path or default_encoder_path(),
                                                          decoder_path or default_decoder_path(), **settings)
