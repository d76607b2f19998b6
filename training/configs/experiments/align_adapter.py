"""Issue 18 experiment: does the decoder read chunk tokens that look like its own input embeddings?

Fits the adapter alone (encoder and decoder frozen, as composed: untrained) by regression: each chunk token of a
training-side book chunk -> the mean decoder input embedding of the decoder tokens that start inside the text its
k encoder tokens cover. Then probes held-out restatement as `training.probe` does, and saves the adapter where
`reading.yaml`'s `aligned-adapter-knob4-512` arm starts from (`model.init_from`).

    python training/configs/experiments/align_adapter.py 4 runs/reading/aligned-k4    # k = 4: ~3 min on 1 thread
    python training/configs/experiments/align_adapter.py 1                             # k = 1: no compression

At k = 1 the probe's equal chunk-token counts are rare, so own is compared with another document's chunk of any
length (the prompt lengths differ: a rough figure).
"""

import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from modeling_e2llm.haystacks import chunk_runs, distinct_contexts
from modeling_e2llm.loading import RUN_SETTINGS_FILE, compose_model_and_processor
from modeling_e2llm.restatement_probe import ProbeChunks, restatement_probe
from training.config import ProbeSettings
from training.probe import restatement_probe_callback
from training.sources import load_records

EXPERIMENT = Path(__file__).with_name("reading.yaml")
CHUNKS, STEPS, BATCH = 1500, 4000, 256


def book_chunks(spec: dict, count: int, processor, seed: int = 0) -> list[str]:
    """About `count` chunk texts spread over the books of `spec` (each book's first chunk left out)."""
    books = [record["context"] for record in distinct_contexts(load_records(spec, seed))]
    rng, texts = random.Random(seed), []
    for book in books:
        runs = chunk_runs(processor, book, 1, count // len(books) + 1, rng, skip_first=True)
        texts += [book[start:end] for run in runs for start, end in run]
    return texts[:count]


@torch.no_grad()
def regression_pairs(model, processor, texts: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, enc_hidden) pooled chunk-token inputs and (n, dec_hidden) their targets: the mean input embedding of
    the decoder tokens whose first non-space character lies in the segment's characters."""
    embeddings = model.get_input_embeddings().weight  # (V, dec_hidden)
    inputs, targets = [], []
    for first in range(0, len(texts), 16):
        batch = texts[first:first + 16]
        encoded = processor.encoder_tokenizer(batch, return_offsets_mapping=True, padding=True, return_tensors="pt")
        pooled = model.model.pool_chunks(encoded["input_ids"], encoded["attention_mask"])  # (b, S, enc_hidden)
        for row, text in enumerate(batch):
            decoded = processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            starts = [a + len(text[a:z]) - len(text[a:z].lstrip()) for a, z in decoded["offset_mapping"]]
            length = int(encoded["attention_mask"][row].sum())
            for segment in range(-(-length // k)):
                offsets = encoded["offset_mapping"][row, segment * k:min(length, segment * k + k)].tolist()
                spans = [(a, z) for a, z in offsets if z > a]  # [CLS] and [SEP] cover no text
                ids = [i for i, s in zip(decoded["input_ids"], starts) if spans and spans[0][0] <= s < spans[-1][1]]
                if ids:
                    inputs.append(pooled[row, segment])
                    targets.append(embeddings[ids].mean(dim=0))
    return torch.stack(inputs), torch.stack(targets)


def fit(adapter: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """MSE regression of the adapter with Adam; returns the mean cosine to the targets on a held-back tenth."""
    order = torch.randperm(len(inputs))
    train, held = order[:int(0.9 * len(order))], order[int(0.9 * len(order)):]
    adapter.requires_grad_(True)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-3)
    for _ in range(STEPS):
        batch = train[torch.randint(0, len(train), (BATCH,))]
        loss = F.mse_loss(adapter(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapter.requires_grad_(False)
    with torch.no_grad():
        return F.cosine_similarity(adapter(inputs[held]), targets[held]).mean().item()


def main(k: int, output: str | None) -> None:
    torch.manual_seed(0)
    model, processor = compose_model_and_processor({"encoder_tokens_per_chunk_token": k}, {"chunk_size": 512})
    model.eval().requires_grad_(False)
    base = yaml.safe_load(EXPERIMENT.read_text())["base"]
    texts = book_chunks(base["data"]["understanding"][0], CHUNKS, processor)
    inputs, targets = regression_pairs(model, processor, texts, k)
    cosine = fit(model.model.adapter, inputs, targets)
    print(f"k={k}: {len(inputs)} pairs, target norm {targets.norm(dim=1).mean():.2f}, held-out cosine {cosine:.3f}")
    if k > 1:
        chunks = restatement_probe_callback(ProbeSettings(**base["probe"]), processor).chunks
    else:
        own = book_chunks(base["probe"]["source"], base["probe"]["chunks"], processor)
        other = own[len(own) // 2:] + own[:len(own) // 2]  # half the list away: other books
        chunks = ProbeChunks(own, other, other)
    print({name: round(value, 3) for name, value in restatement_probe(model, processor, chunks).items()})
    if output:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"base_model.model.model.adapter.{name}": weight.contiguous()
                   for name, weight in model.model.adapter.named_parameters()}, folder / "adapter_model.safetensors")
        settings = {"config": {**base["model"]["config"], "encoder_tokens_per_chunk_token": k},
                    "processor": base["processor"]}
        (folder / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
