"""One efficiency measurement, run in a fresh process so that its peak memory is its own:

    python -m evaluation.efficiency_worker SPEC.json RESULT.json

`evaluation.efficiency` writes SPEC (which model, which system, which text) and reads RESULT. Modes:

- `answer`: one system answers one question about the text with exactly `new_tokens` greedy tokens:
  `e2llm` through the model's raw-text `generate` (`hybrid_top_k` as it takes it; `fast_encoder`: int8),
  `full` and `rag` (its `top_k` chunks) from `evaluation.systems`.
  Forward hooks time the stages: the encoder's forwards, the decoder's first call (everything before
  it turns raw text into decoder inputs) and the LM head's first call (the first token: time to
  first token, i.e. prefill).
- `questions`: E2LLM answers several questions about one document, re-encoding it for each
  (`cached` false) or encoding it once with `encode_context` (`cached` true; `reuse_prefix`: and continuing
  the decoder's prefix keys/values, made by the first question); `hybrid_top_k` as `generate` takes it
  (None: the processor's). Each question's time to first token is timed as in `answer`.

Memory comes from /proc/self/status. The weights are memory-mapped and page in on first use, so
"after loading" is taken after one short warm-up answer; the kernel's peak counter (VmHWM) is then
reset, so that the peak is the measurement's own. working_mb = peak - RSS after loading.
"""

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from modeling_e2llm.flops import encoder_flops
from modeling_e2llm.loading import compose_model_and_processor, load_model

from .data import Example
from .systems import build_system

WARMUP_CHARS = 1000  # a short answer pages in the weights and initializes the kernels


def memory_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, in MB."""
    status = Path("/proc/self/status")
    if not status.exists():
        raise OSError("The efficiency benchmark reads memory from /proc/self/status: run it on Linux.")
    values = {}
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB -> MB
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def reset_peak_memory() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_benchmark_model(model: str | None = None, encoder: str | None = None, decoder: str | None = None,
                         encoder_tokens_per_chunk_token: int | None = None):
    """`(model, processor, label)`: a saved E2LLM folder, a new composite of an encoder and a decoder (or of
    the embedded default's, when only `encoder_tokens_per_chunk_token` is given; untrained adapter: timing does
    not depend on the weights' values), or the embedded default."""
    if encoder or decoder or encoder_tokens_per_chunk_token is not None:
        if bool(encoder) != bool(decoder) or model:
            raise ValueError("Give --encoder and --decoder together, or --model alone (or nothing for the "
                             "embedded default); --encoder-tokens-per-chunk-token composes a new model.")
        label = f"{Path(encoder).name} + {Path(decoder).name}" if encoder else "embedded default (untrained)"
        if encoder_tokens_per_chunk_token is not None:
            label += f", one chunk token per {encoder_tokens_per_chunk_token} encoder tokens"
        paths = {"encoder_path": encoder, "decoder_path": decoder}
        composite, processor = compose_model_and_processor(
            {**paths, "encoder_tokens_per_chunk_token": encoder_tokens_per_chunk_token}, paths)
        return composite.eval(), processor, label
    return load_model(model)


class StageClock:
    """Timestamps one answer's stages with forward hooks on the encoder, the decoder and the LM head."""

    def __init__(self, model):
        self.start = self.decoder_start = self.first_token = None
        self.encoder_s, self.encoder_forwards, self.encoder_lengths, self.decoder_input_tokens = 0.0, 0, [], None
        self._encoder_began = None
        self._handles = [
            model.model.encoder.register_forward_pre_hook(self._encoder_in, with_kwargs=True),
            model.model.encoder.register_forward_hook(self._encoder_out),
            model.model.language_model.register_forward_pre_hook(self._decoder_in, with_kwargs=True),
            model.lm_head.register_forward_hook(self._token_out),
        ]

    def __enter__(self) -> "StageClock":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        for handle in self._handles:
            handle.remove()

    def _encoder_in(self, module, args, kwargs) -> None:
        self.encoder_forwards += 1
        self.encoder_lengths += kwargs["attention_mask"].sum(dim=1).tolist()
        self._encoder_began = time.perf_counter()

    def _encoder_out(self, module, args, output) -> None:
        self.encoder_s += time.perf_counter() - self._encoder_began

    def _decoder_in(self, module, args, kwargs) -> None:
        if self.decoder_start is None:
            self.decoder_start = time.perf_counter()
            inputs = kwargs.get("inputs_embeds")
            self.decoder_input_tokens = int((inputs if inputs is not None else kwargs["input_ids"]).shape[1])

    def _token_out(self, module, args, output) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def timings(self) -> dict:
        return {"prefill_s": self.first_token - self.start, "total_s": self.end - self.start,
                "encode_s": self.decoder_start - self.start, "encoder_s": self.encoder_s,
                "decoder_input_tokens": self.decoder_input_tokens, "encoder_forwards": self.encoder_forwards,
                "encoder_chunks": len(self.encoder_lengths),
                "encoder_tokens": int(sum(self.encoder_lengths))}


def settle() -> dict:
    """RSS once the weights are in, then a fresh peak counter for the measurement."""
    gc.collect()
    after_load = memory_mb()
    return {"rss_after_load_mb": after_load["rss"], "load_peak_mb": after_load["peak"],
            "peak_reset": reset_peak_memory()}


def measured_memory(baseline: dict) -> dict:
    peak = memory_mb()["peak"]
    return {**baseline, "peak_mb": peak, "working_mb": peak - baseline["rss_after_load_mb"]}


def measure_answer(model, processor, spec: dict) -> dict:
    """One system answers `spec["question"]` about the text with exactly `spec["new_tokens"]` tokens."""
    model.generation_config.min_new_tokens = spec["new_tokens"]  # same token count whatever the weights say
    answer = _answerer(model, processor, spec)
    text = Path(spec["text_path"]).read_text(encoding="utf-8")
    answer(text[:WARMUP_CHARS])
    if spec["system"] == "rag":  # the short warm-up text needs no retrieval: page in the encoder too
        question = processor.encoder_tokenizer([spec["question"]], return_tensors="pt")
        model.model.pool_chunks(question["input_ids"], question["attention_mask"], for_scoring=True)
    baseline = settle()
    cpu_start = time.process_time()
    with StageClock(model) as clock:
        answer(text)
    timings, cpu_s = clock.timings(), time.process_time() - cpu_start
    # CPU seconds per wall second and thread: how busy the threads were (read with the load average).
    return {**timings, "cpu_s": cpu_s, "cpu_utilization": cpu_s / (timings["total_s"] * spec["threads"]),
            "encoder_flops": encoder_flops(model.config.encoder_config, clock.encoder_lengths),
            **measured_memory(baseline)}


def _answerer(model, processor, spec: dict):
    """`answer(text)` for the system: E2LLM through the model's raw-text API, as users call it; the
    baselines through `evaluation.systems`."""
    question, new_tokens = spec["question"], spec["new_tokens"]
    if spec["system"] == "e2llm":
        return lambda text: model.generate(context=text, prompt=question, processor=processor,
                                           max_new_tokens=new_tokens, do_sample=False,
                                           hybrid_top_k=spec["hybrid_top_k"])
    rag_settings = {"top_k": spec["top_k"]} if spec["system"] == "rag" else {}
    system = build_system(spec["system"], model, processor, max_new_tokens=new_tokens, **rag_settings)
    return lambda text: system.predict(_example(text, question))


def measure_questions(model, processor, spec: dict) -> dict:
    """Total time for all `spec["questions"]` about one text, with or without a context cache (and prefix
    reuse), and each question's time to first token."""
    text = Path(spec["text_path"]).read_text(encoding="utf-8")
    generate = dict(processor=processor, max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"],
                    do_sample=False, hybrid_top_k=spec["hybrid_top_k"])
    model.generate(context=text[:WARMUP_CHARS], prompt=spec["questions"][0], **generate)
    baseline = settle()
    start, encode_s, per_question, ttft = time.perf_counter(), 0.0, [], []
    source = {"context": text}
    if spec["cached"]:
        source = {"context_cache": model.encode_context(text, processor), "reuse_prefix": spec["reuse_prefix"]}
        encode_s = time.perf_counter() - start
    for question in spec["questions"]:
        with StageClock(model) as clock:
            model.generate(prompt=question, **source, **generate)
        per_question.append(clock.timings()["total_s"])
        ttft.append(clock.timings()["prefill_s"])
    return {"total_s": time.perf_counter() - start, "encode_s": encode_s, "per_question_s": per_question,
            "per_question_ttft_s": ttft, "question_ttft_s": statistics.median(ttft), **measured_memory(baseline)}


def _example(context: str, question: str) -> Example:
    return Example(id="efficiency", context=context, question=question, answer="", answers=[""], task="qa")


def run(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    began = time.perf_counter()
    model, processor, _ = load_benchmark_model(spec.get("model"), spec.get("encoder"), spec.get("decoder"),
                                               spec.get("encoder_tokens_per_chunk_token"))
    if spec.get("fast_encoder"):
        model.quantize_encoder()  # quantizing is part of loading: the int8 system's load_s includes it
    load_s = time.perf_counter() - began
    if spec.get("chunk_size"):
        processor.chunk_size = spec["chunk_size"]
    model.config.encoder_batch_size = spec["encoder_batch_size"]
    measure = measure_answer if spec["mode"] == "answer" else measure_questions
    with torch.inference_mode():
        result = measure(model, processor, spec)
    # The whole process's peak, loading included (the reset clears ru_maxrss as well as VmHWM).
    return {"load_s": load_s, "process_peak_mb": max(result["load_peak_mb"], result["peak_mb"]), **result}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m evaluation.efficiency_worker SPEC.json RESULT.json")
    outcome = run(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(outcome))
    os._exit(0)  # skip interpreter teardown: nothing is left to flush, and it can take seconds
