"""The efficiency benchmark's plots (time.png, memory.png) and markdown summary, from its results dict
(see `evaluation.efficiency`)."""

from pathlib import Path

from matplotlib.figure import Figure

from modeling_e2llm.markdown import markdown_table

# The systems of results written before `settings["systems"]` existed (one RAG, at settings["top_k"]).
EARLIER_SYSTEMS = ("e2llm", "e2llm_int8", "rag", "full")
TIME_PLOT, MEMORY_PLOT = "time.png", "memory.png"
BUSY_LOAD_MARGIN = 0.5  # load average above the benchmark's own threads that flags a shared machine


def systems_of(results: dict) -> list[str]:
    """The systems the run compared, in table order."""
    return results["settings"].get("systems", EARLIER_SYSTEMS)


def _series(results: dict, system: str, key: str) -> tuple[list[int], list[float]]:
    """(context tokens, median `key`) of `system` within the window and beyond it."""
    points = dict(results["medians"].get("compare", {}).get(system, {}))
    points.update(results["medians"].get("long", {}).get(system, {}))
    tokens = sorted(points, key=int)
    return [int(n) for n in tokens], [points[n][key] for n in tokens]


def _plot_lines(ax, results: dict, styles: dict[str, str]) -> None:
    """One line per system and figure (figure name -> line style) over context tokens, log-log."""
    for index, system in enumerate(systems_of(results)):
        for key, style in styles.items():
            tokens, values = _series(results, system, key)
            if tokens:
                ax.plot(tokens, values, style, marker="o", color=f"C{index}",
                        label=f"{system} {key.rsplit('_', 1)[0]}")
    ax.axvline(results["settings"]["window"], color="grey", linestyle=":", label="decoder window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context tokens (decoder tokenizer)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def save_plots(results: dict, folder: Path) -> None:
    """time.png: prefill and total time vs length; memory.png: working memory and peak RSS vs length."""
    figure = Figure(figsize=(7, 5))
    ax = figure.add_subplot()
    _plot_lines(ax, results, {"prefill_s": "-", "total_s": "--"})
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"Time to first token and to {results['settings']['new_tokens']} new tokens")
    figure.tight_layout()
    figure.savefig(folder / TIME_PLOT, dpi=120)

    figure = Figure(figsize=(12, 5))
    for ax, key, title in zip(figure.subplots(1, 2), ("working_mb", "peak_mb"),
                              ("Working memory (peak above the loaded weights)", "Peak RSS")):
        _plot_lines(ax, results, {key: "-"})
        ax.set_ylabel("MB (median)")
        ax.set_title(title)
    figure.tight_layout()
    figure.savefig(folder / MEMORY_PLOT, dpi=120)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _header(results: dict) -> list[str]:
    settings, machine = results["settings"], results["machine"]
    lines = [
        "# E2LLM efficiency benchmark", "",
        f"Model: {settings['model_label']}. Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads, torch {machine['torch_version']} ({machine['cpu_capability']}). "
        f"1-minute load average: {machine['load_average_start'][0]:.2f} at start, median "
        f"{machine['median_load_average']:.2f} after each run (this benchmark alone accounts for up to "
        f"{machine['torch_threads']}). Medians of {settings['repeats']} repetition(s), each in its own process; "
        f"{settings['new_tokens']} new tokens per answer; {settings['encoder_batch_size']} chunks per encoder "
        f"forward; {_compression(settings)}.", "",
    ]
    if machine["median_load_average"] > machine["torch_threads"] + BUSY_LOAD_MARGIN:
        lines += ["**Other processes shared the CPU during this run: its times are inflated and noisy (memory "
                  "figures are not). Take final figures on a quiet machine.**", ""]
    return lines + [f"Command: `{results['command']}`", ""]


def _compression(settings: dict) -> str:
    k = settings.get("encoder_tokens_per_chunk_token")  # absent from results written before the knob
    return "one chunk token per chunk" if k is None else f"one chunk token per {k} encoder tokens of a chunk"


def _targets(results: dict) -> list[str]:
    met = {True: "yes", False: "**no**", None: "not measured"}
    rows = [[target["description"], _fmt(target["value"]), f"{target['threshold']:g}", met[target["met"]]]
            for target in results["targets"]]
    return ["## Targets", "", markdown_table(["target", "value", "threshold", "met"], rows)]


def _comparison(results: dict) -> list[str]:
    compare = results["medians"].get("compare", {})
    if not compare:  # --min-tokens beyond the window: nothing was measured within it
        return []
    rows = []
    for tokens in sorted(compare.get("e2llm", {}), key=int):
        for system in systems_of(results):
            figures = compare.get(system, {}).get(tokens)
            if figures is None:
                continue
            ratio = results["ratios"].get(tokens, {}).get(system, {})
            rows.append([f"{int(tokens):,}", system, _fmt(figures["decoder_input_tokens"], 0), _fmt(figures["prefill_s"]),
                         _fmt(figures["total_s"]), _fmt(figures["working_mb"], 1), _fmt(figures["peak_mb"], 0),
                         _fmt(ratio.get("prefill"), 1), _fmt(ratio.get("total"), 1),
                         _fmt(ratio.get("working_memory"), 1)])
    header = ["context tokens", "system", "decoder input tokens", "prefill s", "total s", "working MB", "peak MB",
              "prefill x", "total x", "working memory x"]
    earlier_rag = results["settings"].get("top_k")  # results written before rag_topK: one RAG, named rag
    title = "## Within the window: E2LLM, RAG and the full context" + (
        f" (rag: top {earlier_rag} chunks)" if earlier_rag else "")
    return [title, "", markdown_table(header, rows),
            "Ratios (x): the other system's figure over E2LLM's (`e2llm`: as the model ships, hybrid recall included "
            "if on; `e2llm_plain`: hybrid recall off; `rag_topK`: the K best-ranked chunks as text). Prefill = time "
            "from raw text to the first new token.", ""] + _fast_encoder_prefill(compare)


def _fast_encoder_prefill(compare: dict) -> list[str]:
    """The full context's prefill over E2LLM's with the int8 encoder, at each length both ran (--fast-encoder)."""
    fast, full = compare.get("e2llm_int8", {}), compare.get("full", {})
    speedups = [f"{_fmt(full[tokens]['prefill_s'] / fast[tokens]['prefill_s'], 1)}x at {int(tokens):,} tokens"
                for tokens in sorted(fast, key=int) if tokens in full]
    return [f"With the int8 encoder (e2llm_int8), the full context's prefill over E2LLM's: {', '.join(speedups)}.",
            ""] if speedups else []


def _long(results: dict) -> list[str]:
    long = results["medians"].get("long")
    if not long:  # --max-tokens within the window: nothing was measured beyond it
        return []
    rows = [[f"{int(tokens):,}", system, _fmt(figures["encoder_chunks"], 0), _fmt(figures["decoder_input_tokens"], 0),
             _fmt(figures["prefill_s"]), _fmt(figures["total_s"]), _fmt(1000 * figures["total_s"] / int(tokens), 3),
             _fmt(figures["working_mb"], 1), _fmt(figures["process_peak_mb"], 0)]
            for system in systems_of(results) if system in long
            for tokens, figures in sorted(long[system].items(), key=lambda i: int(i[0]))]
    header = ["context tokens", "system", "chunks", "decoder input tokens", "prefill s", "total s", "s per 1K tokens",
              "working MB", "process peak MB"]
    lines = [f"## Beyond the window: E2LLM and RAG (chunk size {results['settings']['long_chunk_size']} characters)",
             "", markdown_table(header, rows).rstrip("\n")]
    line = results["linearity"]
    if line:
        lines += ["", f"Straight-line fit from 64K tokens (e2llm): {1000 * line['seconds_per_token']:.3f} s per 1K "
                      f"tokens + {line['intercept_s']:.1f} s; largest deviation {line['max_deviation']:.3f}x."]
    return lines + [""]


def _encoder(results: dict) -> list[str]:
    matmul = results["matmul"]
    lines = ["## Encoder throughput", "",
             f"fp32 matmul peak (torch.mm, {matmul['size']}x{matmul['size']}, "
             f"{results['machine']['torch_threads']} threads): {matmul['peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
             f"(before the runs {matmul['flops_per_s'][0] / 1e9:.1f}, after {matmul['flops_per_s'][1] / 1e9:.1f}).",
             ""]
    rows = [[f"{int(tokens):,}", f"{row['encoder_flops'] / 1e9:,.1f}", f"{row['end_to_end_flops_per_s'] / 1e9:.1f}",
             f"{row['end_to_end_fraction']:.0%}", f"{row['forward_flops_per_s'] / 1e9:.1f}", f"{row['forward_fraction']:.0%}"]
            for tokens, row in sorted(results["encoder_efficiency"].items(), key=lambda i: int(i[0]))]
    lines.append(markdown_table(["context tokens", "encoder GFLOP", "raw text -> chunk tokens GFLOP/s", "of peak",
                                 "encoder forwards GFLOP/s", "of peak"], rows))
    return lines + ["Raw text -> chunk tokens: chunking, tokenization, encoder and adapter, timed up to the "
                        "decoder's first call. FLOPs: the encoder's matrix multiplies, counted from its config.", ""]


def _cache(results: dict) -> list[str]:
    settings, sections = results["settings"], results["context_cache"]
    hybrid = {"cache": f"as shipped (top {settings['hybrid_top_k']})" if settings["hybrid_top_k"] else "off",
              "cache-no-hybrid": "off"}
    modes = {"uncached": "re-encoded for each question", "cached": "encoded once",
             "cached-kv": "encoded once, decoder prefix reused"}
    rows = [[hybrid[section], modes[mode], _fmt(figures["total_s"], 1), _fmt(figures["encode_s"], 1),
             _fmt(figures["question_ttft_s"]), _fmt(figures["speedup"], 1)]
            for section, summary in sections.items() for mode, figures in summary.items() if mode in modes]
    tokens = next(iter(sections.values()), {}).get("context_tokens", 0)
    return ["## Context cache", "",
            f"{settings['cache_questions']} questions about one {tokens:,}-token document.", "",
            markdown_table(["hybrid recall", "document", "total s", "of which encoding s",
                            "question TTFT s (median)", "x faster than re-encoding"], rows),
            "Question TTFT: from a question's `generate` call to its first new token (with re-encoding, the "
            "encoding included; with prefix reuse, the first question also computes the prefix).", ""]


def _failures(results: dict) -> list[str]:
    errors = [run for run in results["runs"] if "error" in run]
    if not errors:
        return []
    return ["## Failed runs", ""] + [f"- {run['section']} {run['system']} {run['context_tokens']:,} tokens: "
                                     f"{run['error']}" for run in errors] + [""]


def summary_markdown(results: dict) -> str:
    sections = (_header, _targets, _comparison, _long, _encoder, _cache, _failures)
    return "\n".join(line for section in sections for line in section(results))
