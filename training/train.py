"""Train E2LLM from a YAML config: `python -m training.train --config training/configs/<name>.yaml [--resume]`.

Shows progress, saves checkpoints (`training.save_steps`), resumes after being killed (`--resume`),
and at the end writes to `<output_dir>/final/` what training changed (LoRA + adapter, peft format)
with `demo.json` (the settings `modeling_e2llm.loading.load_model` reads), `log_history.json` and `loss.png`.
Multi-GPU: `accelerate launch --config_file training/accelerate/<zero2|fsdp>.yaml -m training.train ...`.
"""

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import datasets
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback, set_seed
from trl import SFTConfig

from modeling_e2llm import E2LLMConfig, E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.loading import RUN_SETTINGS_FILE, compose_model_and_processor
from modeling_e2llm.lora import lora_config

from .align import align_adapter
from .config import TrainConfig, add_config_arguments, config_from_arguments
from .dataset import sample_cache_key, training_dataset, with_pooled_chunks
from .plot import save_curves
from .probe import restatement_probe_callback
from .samples import E2LLMCollator
from .trainer import E2LLMTrainer

logger = logging.getLogger("training")
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def load_model_and_processor(config: TrainConfig) -> tuple[E2LLMForCausalLM, E2LLMProcessor]:
    """The untrained composite and its processor (no encoder/decoder paths: the embedded default)."""
    paths = {"encoder_path": config.model.encoder, "decoder_path": config.model.decoder}
    return compose_model_and_processor({**paths, **config.model.config}, {**paths, **vars(config.processor)})


# transformers 5.23 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (the old name
# warns there and is unknown before it).
_CHECKPOINTING = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                      if name in {field.name for field in dataclasses.fields(SFTConfig)})


def sft_config(training: dict) -> SFTConfig:
    """SFTConfig from the config's `training` section, with E2LLM's required settings and CPU-safe defaults."""
    on_gpu = torch.cuda.is_available()
    workers = min(4, len(os.sched_getaffinity(0)) - 1) if on_gpu else 0
    defaults = {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),  # SFTConfig's bf16=True makes CPU steps ~14x slower
        "use_cpu": not on_gpu,
        _CHECKPOINTING: False,  # TRL turns it on; on CPU it only costs time
        "max_length": None,  # never cut a sample: too long ones are refused while building them
        "report_to": "none",
        "logging_steps": 10,
        "save_strategy": "steps",
        # The Trainer's NaN filter reads every micro-batch's loss back from the device, which stalls the step
        # until the GPU catches up; a NaN then shows in the logged loss instead of being averaged away.
        "logging_nan_inf_filter": False,
        # On a GPU, collate the next batches in worker processes into pinned memory while the device computes.
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": on_gpu,
        # ... and copy them to the device without waiting (accelerate's non_blocking, made for pinned memory): a
        # plain copy makes the host wait for it. Sync-debug mode counted ~15 waits a step on an H200 before this
        # and the models' masks were made wait-free (tests/test_training.py; not yet measured again on a GPU).
        "accelerator_config": {"non_blocking": on_gpu},
        "dataloader_persistent_workers": workers > 0,
    }
    required = {"remove_unused_columns": False,  # keeps the chunk columns and the task flag
                "dataset_kwargs": {"skip_prepare_dataset": True}}  # the rows are already tokenized
    if "output_dir" not in training:
        raise ValueError("training.output_dir is missing: name the folder for checkpoints and results.")
    return SFTConfig(**{**defaults, **training, **required})


def build_samples(config: TrainConfig) -> tuple[E2LLMForCausalLM, E2LLMProcessor, datasets.Dataset, SFTConfig]:
    """The model, processor, training set (cached, see `cached_training_dataset`) and trainer settings."""
    args = sft_config(config.training)
    set_seed(args.seed)  # the adapter and LoRA start from random weights: same seed, same start
    model, processor = load_model_and_processor(config)
    model.to(args.device)  # hybrid samples score their chunks with the model: on the GPU when there is one
    window = getattr(model.config.text_config, "max_position_embeddings", None)
    return model, processor, cached_training_dataset(config, processor, window, model, args), args


# The settings that decide what the adapter's input and output vectors mean: a run started from another must
# share them; and, where that run trained LoRA, the settings that decide LoRA's shapes and places.
_ADAPTER_SETTINGS = ("encoder_path", "decoder_path", "pooling", "encoder_tokens_per_chunk_token", "adapter_num_layers",
                     "adapter_hidden_size")
_LORA_SETTINGS = ("lora_rank", "lora_alpha", "encoder_lora_layers")


def start_from_run(model: torch.nn.Module, config: TrainConfig) -> None:
    """Start the peft-wrapped `model` from the LoRA and adapter of `config.model.init_from`, a finished run.

    Two uses: xRAG's second stage, after a first stage that trained the adapter alone (its LoRA B is still zero,
    an identity, so LoRA starts as usual); and a run continued on new data (a demo's next version), where LoRA
    carries on from where that run left it. A run whose settings would give the vectors or LoRA other meanings
    or shapes is refused, and so is one that tuned a part (LoRA on the encoder, say) this run has no place for."""
    run = Path(config.model.init_from)
    first = json.loads((run / RUN_SETTINGS_FILE).read_text())["config"]
    this = {**_run_paths(config), **config.model.config}
    weights = load_file(run / "adapter_model.safetensors")
    trained_lora = any("lora_B" in name and weight.any() for name, weight in weights.items())
    settings = _ADAPTER_SETTINGS + (_LORA_SETTINGS if trained_lora else ())
    # A setting a config leaves out is the model's default, so compare the values the models were built with.
    first, this = ({key: values.get(key, getattr(E2LLMConfig, key, None)) for key in settings} for values in (first, this))
    differing = [key for key in settings if first[key] != this[key]]
    if differing:
        key = differing[0]
        raise ValueError(f"model.init_from {run} was trained with {key}={first[key]!r}, this config has "
                         f"{this[key]!r}: its weights would mean something else here. Use the same setting in both.")
    unexpected = set_peft_model_state_dict(model, weights).unexpected_keys
    if unexpected:
        raise ValueError(f"model.init_from {run} holds {unexpected[0]}, which this run has no place for: make the "
                         "same parts trainable as that run did.")
    logger.info("LoRA and adapter from %s (%s).", run, "a run that trained LoRA" if trained_lora else "adapter only")


def build_trainer(config: TrainConfig, resume: bool | str | None = None) -> E2LLMTrainer:
    """Model, LoRA, data and trainer as the config says (`resume`: a checkpoint will replace the weights, so the
    adapter is not fitted first)."""
    model, processor, dataset, args = build_samples(config)
    if config.align.chunks and not resume:
        align_adapter(model, processor, config.align, config.data.seed)  # before peft copies the adapter
    collator = E2LLMCollator(pad_token_id=processor.pad_id, encoder_pad_token_id=processor.encoder_pad_id)
    adapter_only = not (config.trainable.encoder or config.trainable.decoder)
    trainer = E2LLMTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        processing_class=processor.tokenizer,  # a tokenizer, not the processor: TRL would treat a processor as a VLM
        # Adapter only: peft wraps (and saves, and loads) a model only if LoRA targets something, so the decoder
        # gets its LoRA, frozen below at its zero start (an identity): the run's folder loads like any other.
        peft_config=lora_config(model.config, encoder=config.trainable.encoder,
                                decoder=config.trainable.decoder or adapter_only),
        understanding_weight=config.tasks.understanding_weight,
        adapter_learning_rate=config.adapter_learning_rate)
    if config.model.init_from is not None:
        start_from_run(trainer.model, config)
    if adapter_only:
        freeze_lora(trainer.model)
    if config.max_minutes is not None:
        trainer.add_callback(TimeBudget(config.max_minutes))
    if config.probe.every_steps:
        trainer.add_callback(restatement_probe_callback(config.probe, processor, config.data.seed))
    return trainer


def cached_training_dataset(config: TrainConfig, processor: E2LLMProcessor, window: int | None,
                            model: E2LLMForCausalLM, args: SFTConfig) -> datasets.Dataset:
    """The config's training set, built once and kept in `<output_dir>/samples/<key>`: a resumed or repeated
    run loads it, a changed source, setting or building code (the key, `sample_cache_key`) builds it anew.
    The main process builds and saves first; the others then load its copy."""
    folder = Path(args.output_dir) / "samples" / sample_cache_key(config, window, model)
    with args.main_process_first(desc="building the training samples"):
        if folder.is_dir():
            logger.info("Training samples from %s (built before with the same settings).", folder)
            return datasets.load_from_disk(str(folder))
        start = time.monotonic()
        dataset = training_dataset(config.data, config.tasks, processor, window, model)
        if not config.trainable.encoder:  # a frozen encoder's chunk tokens are the same every epoch: pool them once
            dataset = with_pooled_chunks(dataset, model)
        logger.info("Built %d training samples in %.0f s.", len(dataset), time.monotonic() - start)
        dataset.save_to_disk(str(folder))
    return dataset


def freeze_lora(model: torch.nn.Module) -> None:
    """Stop training every LoRA weight of `model` (the optimizer, built later, takes trainable ones only):
    nothing but the adapter learns, and backward computes no LoRA or encoder gradients."""
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(False)


class TimeBudget(TrainerCallback):
    """Ends training (with a checkpoint) once `minutes` of training time have passed in this run."""

    def __init__(self, minutes: float):
        self.seconds, self.start = 60 * minutes, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            logger.info("Time budget of %.1f minutes spent at step %d: stopping.", self.seconds / 60, state.global_step)
            control.should_training_stop = control.should_save = True


def save_final(trainer: E2LLMTrainer, config: TrainConfig) -> Path:
    """Write LoRA + adapter (peft), demo.json, log_history.json and loss.png under `<output_dir>/final`."""
    final = Path(trainer.args.output_dir) / "final"
    trainer.save_model(str(final))  # gathers sharded weights under FSDP/DeepSpeed
    if not trainer.is_world_process_zero():
        return final
    adapter_config = final / "adapter_config.json"
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = None  # in-memory composite; never record a machine path
    adapter_config.write_text(json.dumps(settings, indent=2))
    # The encoder and decoder it was trained on, so that upload.py and modeling_e2llm.loading rebuild the same
    # base (none recorded: the embedded default); local folders absolute, as later commands run elsewhere.
    parts = _run_paths(config)
    demo = {"config": {**parts, **config.model.config}, "processor": {**parts, **vars(config.processor)}}
    (final / RUN_SETTINGS_FILE).write_text(json.dumps(demo, indent=2) + "\n")
    save_curves(trainer.state.log_history, final)
    return final


def _run_paths(config: TrainConfig) -> dict[str, str]:
    """The encoder and decoder paths as a run's `demo.json` records them (none: the embedded default)."""
    return {f"{part}_path": _portable(path) for part, path in (("encoder", config.model.encoder),
                                                              ("decoder", config.model.decoder)) if path}


def _portable(path: str) -> str:
    """A local folder as an absolute path; a Hub id as it is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def train(config: TrainConfig, resume: bool | str | None = None) -> E2LLMTrainer:
    """Build, train (from a checkpoint when resuming) and save; returns the trainer."""
    trainer = build_trainer(config, resume)
    trainer.train(resume_from_checkpoint=resume)  # True: the latest checkpoint-* in output_dir
    save_final(trainer, config)
    return trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="continue from the latest checkpoint in output_dir, or from the checkpoint given")
    parser.add_argument("--output-dir", help="override training.output_dir")
    parser.add_argument("--max-minutes", type=float,
                        help="override max_minutes: stop and save after this many minutes of training")
    parser.add_argument("--samples-only", action="store_true",
                        help="build (and cache in output_dir) the training samples, then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    # The two flags are shorthands for --set, so that the config checks them like any other value.
    args.set += [f"{key}={json.dumps(value)}" for key, value in (("training.output_dir", args.output_dir),
                                                                 ("max_minutes", args.max_minutes)) if value is not None]
    config = config_from_arguments(parser, args)
    if args.samples_only:
        build_samples(config)
        return
    trainer = train(config, args.resume)
    logger.info("Done: results in %s", Path(trainer.args.output_dir) / "final")


if __name__ == "__main__":
    main()
