"""Training step benchmark: `python -m training.benchmark --config <yaml> [--steps N] [--warmup W] [--output DIR]`.

Runs, in one process and on the config's own data mix (rows in dataset order, which the mix already shuffled):

- `e2llm`: N steps of the real trainer, built as `training.train` builds it;
- `plain_sft`: N steps of a plain TRL SFTTrainer on the same decoder (LoRA as configured) reading the same
  prompt and target tokens, each chunk placeholder replaced by an ordinary token;
- `encoder_alone`: the encoder's own forward and backward (LoRA as configured, with the adapter) on the same
  chunks, in the model's own encoder batches.

For each: seconds per step (median), samples/s, decoder and encoder tokens/s (real tokens, padding left
out), FLOP/s from `modeling_e2llm.flops` (3x the forward) and its share of the device's measured matmul rate
(bf16 on a GPU, fp32 on the CPU). For the trainers, where a step's time goes: fetching the batch (`data`),
the model's forward (the encoder's part of it separately) and backward, and the rest (`other_host`:
optimizer, scheduler, loss bookkeeping, callbacks); `host_overhead` is the step minus forward and backward.
The stage clocks synchronize a GPU at each boundary (else they would time kernel launches); on a GPU the
device's busy time per step also comes from torch.profiler's CUDA kernel trace. The first W steps warm up.
Writes DIR/benchmark.json and DIR/summary.md.
"""

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch
import transformers
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTTrainer

from modeling_e2llm import flops
from modeling_e2llm.command_line import at_least
from modeling_e2llm.embedded_default import default_decoder_path
from modeling_e2llm.markdown import markdown_table
from modeling_e2llm.modeling_e2llm import attention_kernels

from .architectures import with_random_weights
from .config import TrainConfig, add_config_arguments, config_from_arguments
from .train import build_trainer, sft_config

RESULTS_FILE, SUMMARY_FILE = "benchmark.json", "summary.md"
TARGET_RATIO = 1.3  # an E2LLM step within 1.3x of (plain SFT step + the encoder alone)
TARGET_HOST_OVERHEAD_S = 0.020  # tiny models: time per step outside the models' forward and backward


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StageClock(TrainerCallback):
    """Times a trainer's steps and the stages inside them, and keeps each micro-batch's masks for counting.

    Stages: `data` (Trainer.get_batch_samples), `forward` (the model's forward, hooked), `encoder` (the chunk
    encoder's forwards inside it, for E2LLM), `backward` (accelerator.backward). Each stage sums per step.
    """

    def __init__(self, trainer, encoder: torch.nn.Module | None = None):
        self.step_ends, self.stages, self.batches = [], [], []  # per step: end time, {stage: s}, [inputs]
        self._current = {}
        self._wrap(trainer, "get_batch_samples", "data")
        self._wrap(trainer.accelerator, "backward", "backward")
        for module, stage in ((trainer.model, "forward"), (encoder, "encoder")):
            if module is not None:
                module.register_forward_pre_hook(lambda *_, stage=stage: self._start(stage))
                module.register_forward_hook(lambda *_, stage=stage: self._stop(stage))
        compute_loss = trainer.compute_loss

        def recording_compute_loss(model, inputs, *args, **kwargs):
            self._current.setdefault("inputs", []).append({key: inputs[key] for key in
                                                           ("attention_mask", "chunk_input_ids", "chunk_attention_mask")
                                                           if key in inputs})
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = recording_compute_loss
        trainer.add_callback(self)

    def _wrap(self, owner, name: str, stage: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            self._start(stage)
            result = method(*args, **kwargs)
            self._stop(stage)
            return result

        setattr(owner, name, timed)

    def _start(self, stage: str) -> None:
        _synchronize()
        self._current[f"{stage}_start"] = time.perf_counter()

    def _stop(self, stage: str) -> None:
        _synchronize()
        self._current[stage] = self._current.get(stage, 0.0) + time.perf_counter() - self._current.pop(f"{stage}_start")

    def on_train_begin(self, args, state, control, **kwargs):
        _synchronize()
        self.step_ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        self.step_ends.append(time.perf_counter())
        self.batches.append(self._current.pop("inputs", []))
        self.stages.append({stage: self._current.pop(stage, 0.0) for stage in ("data", "forward", "encoder", "backward")})

    def step_seconds(self) -> list[float]:
        return [end - start for start, end in zip(self.step_ends, self.step_ends[1:])]


@contextmanager
def device_kernel_time(result: dict):
    """On a GPU, the summed CUDA kernel time of the block (torch.profiler, device activity only) into
    `result["device_busy_s"]`; nothing on the CPU, where the device is the host."""
    if not torch.cuda.is_available():
        yield
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        yield
    result["device_busy_s"] = sum(event.self_device_time_total for event in profiler.key_averages()) / 1e6


class ProfileAfterWarmup(TrainerCallback):
    """Enters `profiler` (a context manager, e.g. `device_kernel_time`) once the warm-up steps are done, and
    leaves it when training ends, the device's queued work done."""

    def __init__(self, warmup: int, profiler):
        self.warmup, self.profiler, self.entered = warmup, profiler, False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.profiler.__enter__()
            self.entered = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.entered:
            _synchronize()
            self.profiler.__exit__(None, None, None)


def benchmark_config(config: TrainConfig, steps: int, warmup: int, output: Path) -> TrainConfig:
    """`config` (changed in place) with the trainer settings of a benchmark: W + N steps, no checkpoints, no
    logging inside the timed steps, rows in dataset order (so that both trainers see the same rows), no time
    budget, no probe (it would run inside the last timed step), no fitted adapter (its values do not change a step's
    time; the fit would only delay the first step)."""
    config.max_minutes = None
    config.probe.every_steps = 0
    config.align.chunks = 0
    config.training.update(output_dir=str(output / "run"), max_steps=warmup + steps, save_strategy="no",
                           logging_steps=10 ** 6, report_to="none", disable_tqdm=True)
    return config


def in_dataset_order(trainer) -> None:
    """Rows in dataset order (the mix is already shuffled), so that both trainers read the same rows;
    a sampler override rather than `train_sampling_strategy`, which older transformers lack."""
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(trainer.train_dataset)


def run_e2llm(config: TrainConfig, warmup: int) -> tuple[dict, StageClock, object]:
    """Build (timed) and train the E2LLM trainer; returns the build figures, the clock and the trainer."""
    start = time.perf_counter()
    trainer = build_trainer(config)
    built = {"build_s": time.perf_counter() - start, "rows": len(trainer.train_dataset)}
    e2llm = trainer.model.get_base_model()
    in_dataset_order(trainer)
    clock = StageClock(trainer, encoder=e2llm.model.encoder)
    trainer.add_callback(ProfileAfterWarmup(warmup, device_kernel_time(built)))
    trainer.train()
    return built, clock, trainer


def encoder_alone(trainer, clock: StageClock, warmup: int) -> list[dict]:
    """The encoder's (and adapter's) forward and backward on each timed step's chunks, in the model's own
    encoder batches (`E2LLMModel.get_chunk_features`), under the trainer's autocast."""
    model = trainer.model.get_base_model().model
    model.train()
    times = []
    for batches in clock.batches[warmup - 1:]:  # one warm-up step
        forward = backward = 0.0
        for inputs in batches:
            if "chunk_input_ids" not in inputs:  # a frozen encoder's chunks were pooled before training: no encoder work
                continue
            ids, mask = inputs["chunk_input_ids"], inputs["chunk_attention_mask"]
            _synchronize()
            start = time.perf_counter()
            with trainer.accelerator.autocast():
                features = model.get_chunk_features(ids, mask)  # (n_chunks, dec_hidden)
            _synchronize()
            middle = time.perf_counter()
            features.float().square().mean().backward()
            _synchronize()
            forward, backward = forward + middle - start, backward + time.perf_counter() - middle
        times.append({"forward": forward, "backward": backward})
    trainer.model.zero_grad(set_to_none=True)
    return times[1:]


def plain_rows(dataset: datasets.Dataset, chunk_token_id: int, ordinary_token_id: int, count: int) -> datasets.Dataset:
    """The first `count` rows as plain SFT rows: the same input ids and labels, placeholders replaced."""
    def plain(row):
        return {"input_ids": [ordinary_token_id if i == chunk_token_id else i for i in row["input_ids"]],
                "labels": row["labels"]}
    return dataset.select(range(count)).map(plain, remove_columns=dataset.column_names)


def run_plain_sft(config: TrainConfig, rows: datasets.Dataset) -> StageClock:
    """A plain TRL SFTTrainer on the config's decoder, with LoRA on the same modules, over `rows`, with the
    attention kernels E2LLM's forward uses (cuDNN's would cost it ~100 ms of host time a layer on a GPU)."""
    settings = config.model.config
    path = config.model.decoder or default_decoder_path()
    decoder = AutoModelForCausalLM.from_pretrained(path)
    lora = LoraConfig(r=settings.get("lora_rank", 8), lora_alpha=settings.get("lora_alpha", 16),
                      lora_dropout=settings.get("lora_dropout", 0.05),
                      target_modules=settings.get("decoder_lora_modules", ["q_proj", "k_proj", "v_proj", "o_proj"]))
    args = sft_config({**config.training, "output_dir": config.training["output_dir"] + "-plain"})
    trainer = SFTTrainer(model=decoder, args=args, train_dataset=rows, peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(path))
    in_dataset_order(trainer)
    clock = StageClock(trainer)
    with attention_kernels():
        trainer.train()
    return clock


def measured(clock: StageClock, warmup: int) -> tuple[list[float], list[dict], list[list[dict]]]:
    """Step seconds, stages and micro-batches of the timed steps (after the warm-up)."""
    return clock.step_seconds()[warmup:], clock.stages[warmup:], clock.batches[warmup:]


def counts(batches: list[list[dict]], config) -> dict:
    """Samples, real decoder and encoder tokens, chunks and model FLOPs (forward + backward) of these steps;
    `config`: the E2LLM config (text_config, encoder_config) and adapter module, or None parts for a system
    without them."""
    text_config, encoder_config, adapter = config
    samples = decoder_tokens = encoder_tokens = chunks = model_flops = 0
    for step in batches:
        for inputs in step:
            decoder_lengths = inputs["attention_mask"].sum(dim=1).tolist()
            samples += len(decoder_lengths)
            if text_config is not None:
                decoder_tokens += sum(decoder_lengths)
                model_flops += flops.decoder_flops(text_config, decoder_lengths)
            if "chunk_attention_mask" in inputs and encoder_config is not None:
                chunk_lengths = inputs["chunk_attention_mask"].sum(dim=1).tolist()
                encoder_tokens, chunks = encoder_tokens + sum(chunk_lengths), chunks + len(chunk_lengths)
                model_flops += flops.encoder_flops(encoder_config, chunk_lengths)
                model_flops += flops.linear_flops(adapter, len(chunk_lengths))
    return {"samples": samples, "decoder_tokens": decoder_tokens, "encoder_tokens": encoder_tokens,
            "chunks": chunks, "model_flops": flops.TRAINING_FACTOR * model_flops}


def rates(step_seconds: list[float], totals: dict, peak: float) -> dict:
    """Per-step and per-second figures of a system from its timed steps and their totals."""
    seconds = sum(step_seconds)
    return {"steps": len(step_seconds), "step_s_median": statistics.median(step_seconds),
            "step_s_mean": seconds / len(step_seconds), **totals,
            "samples_per_s": totals["samples"] / seconds, "decoder_tokens_per_s": totals["decoder_tokens"] / seconds,
            "encoder_tokens_per_s": totals["encoder_tokens"] / seconds, "flops_per_s": totals["model_flops"] / seconds,
            "matmul_share": totals["model_flops"] / seconds / peak}


def where_time_goes(step_seconds: list[float], stages: list[dict]) -> dict:
    """Mean seconds per step in each stage; `host_overhead_s`: the step minus the models' forward and backward."""
    mean = {f"{stage}_s": statistics.fmean(s[stage] for s in stages) for stage in stages[0]}
    step = statistics.fmean(step_seconds)
    mean["other_host_s"] = step - mean["data_s"] - mean["forward_s"] - mean["backward_s"]
    mean["host_overhead_s"] = step - mean["forward_s"] - mean["backward_s"]
    return mean


def machine() -> dict:
    on_gpu = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cores": len(os.sched_getaffinity(0))}


def benchmark(config: TrainConfig, steps: int, warmup: int, output: Path, architectures: Path | None = None) -> dict:
    """Run the three measurements and return every figure (see the module docstring); `architectures`: a
    `training.architectures` folder whose encoder and decoder, with random weights, replace the config's."""
    config = benchmark_config(config, steps, warmup, output)
    if architectures is not None:
        config.model.encoder, config.model.decoder = (
            str(with_random_weights(architectures / part, output / "random-weights" / part)) for part in ("encoder", "decoder"))
    on_gpu = torch.cuda.is_available()
    peak_args = (8192, torch.bfloat16, "cuda") if on_gpu else (2048, torch.float32, "cpu")
    peak = flops.matmul_flops_per_s(*peak_args)  # again at the end: the better one, should the machine be busy now
    built, clock, trainer = run_e2llm(config, warmup)
    e2llm = trainer.model.get_base_model()
    e2llm_seconds, e2llm_stages, e2llm_batches = measured(clock, warmup)
    e2llm_counts = counts(e2llm_batches, (e2llm.config.text_config, e2llm.config.encoder_config, e2llm.model.adapter))
    encoder_times = encoder_alone(trainer, clock, warmup)
    encoder_seconds = [t["forward"] + t["backward"] for t in encoder_times]
    encoder_counts = counts(e2llm_batches, (None, e2llm.config.encoder_config, e2llm.model.adapter))
    rows_used = sum(len(inputs["attention_mask"]) for step in clock.batches for inputs in step)
    ordinary = trainer.processing_class.convert_tokens_to_ids("the")
    plain = plain_rows(trainer.train_dataset, e2llm.config.chunk_token_id, ordinary, rows_used)
    text_config = e2llm.config.text_config
    del trainer, e2llm
    gc.collect()
    plain_clock = run_plain_sft(config, plain)
    plain_seconds, plain_stages, plain_batches = measured(plain_clock, warmup)
    peak = max(peak, flops.matmul_flops_per_s(*peak_args))
    results = {
        "models": {"encoder": config.model.encoder, "decoder": config.model.decoder,
                   "random_weights_from": str(architectures) if architectures else None},
        "steps": steps, "warmup": warmup, "machine": machine(),
        "peak_matmul_flops_per_s": peak, "peak_dtype": "bfloat16" if on_gpu else "float32",
        "sample_building": built,
        "e2llm": {**rates(e2llm_seconds, e2llm_counts, peak), "time": where_time_goes(e2llm_seconds, e2llm_stages)},
        "plain_sft": {**rates(plain_seconds, counts(plain_batches, (text_config, None, None)), peak),
                      "time": where_time_goes(plain_seconds, plain_stages)},
        "encoder_alone": {**rates(encoder_seconds, encoder_counts, peak),
                          "forward_s_mean": statistics.fmean(t["forward"] for t in encoder_times),
                          "backward_s_mean": statistics.fmean(t["backward"] for t in encoder_times)},
    }
    if "device_busy_s" in built:
        results["e2llm"]["time"]["device_busy_s"] = built.pop("device_busy_s") / steps
    reference = results["plain_sft"]["step_s_mean"] + results["encoder_alone"]["step_s_mean"]
    results["ratio_to_parts"] = results["e2llm"]["step_s_mean"] / reference
    return results


def summary_markdown(results: dict) -> str:
    """A short report of `results`: one table of the three systems, one of where an E2LLM step's time goes."""
    rows = [[name, f"{r['step_s_mean'] * 1e3:.1f}", f"{r['samples_per_s']:.2f}", f"{r['decoder_tokens_per_s']:,.0f}",
             f"{r['encoder_tokens_per_s']:,.0f}", f"{r['flops_per_s'] / 1e9:,.1f}", f"{100 * r['matmul_share']:.1f}%"]
            for name, r in ((name, results[name]) for name in ("e2llm", "plain_sft", "encoder_alone"))]
    stages = results["e2llm"]["time"]
    random_weights = results["models"]["random_weights_from"]
    return "\n".join([
        "# Training step benchmark", "", f"`{results['command']}`", "",
        f"{results['machine']['device']}, {results['machine']['torch_threads']} torch threads; "
        f"{results['steps']} timed steps after {results['warmup']} warm-up; matmul peak "
        f"{results['peak_matmul_flops_per_s'] / 1e9:,.0f} GFLOP/s ({results['peak_dtype']}). Building "
        f"{results['sample_building']['rows']} rows took {results['sample_building']['build_s']:.1f} s.",
        *([f"Models: the architectures of {random_weights} with RANDOM weights (the same FLOPs and speed as "
           "trained weights; throughput only)."] if random_weights else []), "",
        markdown_table(["system", "ms/step", "samples/s", "decoder tok/s", "encoder tok/s", "GFLOP/s",
                        "of matmul peak"], rows),
        f"E2LLM step / (plain SFT step + encoder alone): **{results['ratio_to_parts']:.2f}** "
        f"(target <= {TARGET_RATIO}).", "",
        markdown_table(["E2LLM step, mean ms"] + [name.removesuffix("_s") for name in stages],
                       [[""] + [f"{value * 1e3:.1f}" for value in stages.values()]]),
        f"Host overhead (step minus the models' forward and backward): {stages['host_overhead_s'] * 1e3:.1f} ms "
        f"per step (target with tiny models < {TARGET_HOST_OVERHEAD_S * 1e3:.0f} ms).",
        "FLOPs: matmul FLOPs of encoder + adapter + decoder (LM head included) over the real tokens, x3 for the "
        "backward (modeling_e2llm/flops.py): model FLOPs, more than LoRA's backward does (no gradients of frozen "
        "weights, none below the encoder's lowest LoRA layer), so a share near or over 100% means the device is "
        "fully busy. The matmul peak is the better of two measurements (before and after).", ""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=at_least(1), default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=at_least(1), default=2,
                        help="untimed steps first, at least one: the first step pays for kernel selection (default 2)")
    parser.add_argument("--output", default="runs/benchmark", help="folder for benchmark.json and summary.md")
    parser.add_argument("--architectures", type=Path,
                        help="a `python -m training.architectures` folder: its encoder and decoder with random weights "
                             "replace the config's (same speed; for throughput only)")
    args = parser.parse_args(argv)
    config = config_from_arguments(parser, args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    command = "python -m training.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = {"command": command, **benchmark(config, args.steps, args.warmup, output, args.architectures)}
    (output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    summary = summary_markdown(results)
    (output / SUMMARY_FILE).write_text(summary)
    print(summary)
    return results


if __name__ == "__main__":
    main()
