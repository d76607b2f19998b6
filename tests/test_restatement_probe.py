"""Specification of the restatement probe: which held-out chunks it scores, what it computes, and the training
callback that logs it without disturbing training."""

import pytest
import torch

from modeling_e2llm.restatement_probe import probe_chunks, restatement_probe
from training.config import TrainConfig
from training.train import build_trainer, train

from test_training import tiny_config, trained_weights, write_jsonl


@pytest.fixture(scope="module")
def documents(essay_text) -> list[str]:
    """Three documents of about 3,000 characters (47 chunks of at most 64 characters each)."""
    return [essay_text[3000 * i: 3000 * (i + 1)] for i in range(3)]


def test_probe_pairs_a_chunk_with_the_next_chunk_of_its_document_and_a_chunk_of_another(tiny_processor, documents):
    chunks = probe_chunks(tiny_processor, documents, count=6)
    assert len(chunks.own) == 6
    for own, nearby, other in zip(chunks.own, chunks.nearby, chunks.other):
        home = next(d for d in documents if own in d)
        assert own + nearby in home  # the next chunk, in the same document
        assert other not in home and any(other in d for d in documents)


def test_with_the_knob_own_nearby_and_other_chunks_make_as_many_chunk_tokens(tiny_at, essay_text):
    _, processor = tiny_at(4, chunk_size=128)  # 128 characters make 16-30 encoder tokens: 4-8 chunk tokens
    documents = [essay_text[6000 * i: 6000 * (i + 1)] for i in range(3)]
    chunks = probe_chunks(processor, documents, count=8)
    count = lambda text: processor.encode_chunks([text])["num_chunk_tokens"][0]
    assert len(chunks.own) >= 4
    assert len({count(own) for own in chunks.own}) > 1  # the figures still cover chunks of several lengths
    for own, nearby, other in zip(chunks.own, chunks.nearby, chunks.other):
        assert count(own) == count(nearby) == count(other)
        assert own != nearby and next(d for d in documents if own in d) == next(d for d in documents if nearby in d)


def test_probe_leaves_out_each_documents_first_chunk(tiny_processor, documents):
    first_chunks = {text[slice(*tiny_processor.chunk(text)[0])] for text in documents}
    chunks = probe_chunks(tiny_processor, documents, count=40)
    assert not first_chunks & set(chunks.own + chunks.nearby)


@pytest.mark.parametrize("second", [None, "Too short to hold two chunks."])
def test_probe_needs_chunks_from_two_documents(tiny_processor, documents, second):
    with pytest.raises(ValueError, match="(needs|at least) two"):
        probe_chunks(tiny_processor, documents[:1] + ([second] if second else []), count=4)


def test_probe_nll_is_the_models_restate_loss_of_each_chunk_averaged(tiny_model, tiny_processor, documents):
    chunks = probe_chunks(tiny_processor, documents, count=3)
    losses = {}
    for name, contexts in (("own", chunks.own), ("nearby", chunks.nearby), ("other", chunks.other)):
        losses[name] = torch.tensor([tiny_model(**tiny_processor(context=c, target=t, padding_side="right")).loss.item()
                                     for c, t in zip(contexts, chunks.own)])
    figures = restatement_probe(tiny_model, tiny_processor, chunks, batch_size=2)  # padded batches
    assert figures["probe_nll_own"] == pytest.approx(losses["own"].mean().item(), abs=1e-4)
    assert figures["probe_nll_nearby"] == pytest.approx(losses["nearby"].mean().item(), abs=1e-4)
    assert figures["probe_nll_other"] == pytest.approx(losses["other"].mean().item(), abs=1e-4)
    gaps = losses["nearby"] - losses["own"]
    assert figures["probe_gap_nearby"] == pytest.approx(gaps.mean().item(), abs=1e-4)
    assert figures["probe_gap_nearby_se"] == pytest.approx(gaps.std().item() / 3 ** 0.5, abs=1e-4)  # paired, 3 chunks


def probe_section(tmp_path, documents, every_steps: int) -> dict:
    source = write_jsonl(tmp_path / "held_out.jsonl", [{"id": f"d{i}", "context": text, "question": "", "answer": ""}
                                                         for i, text in enumerate(documents)])
    return {"every_steps": every_steps, "chunks": 4, "source": {"path": source}}


def test_probe_logs_at_the_start_every_n_steps_and_at_the_end(tiny_paths, tmp_path, essay_text, documents):
    config = tiny_config(tiny_paths, tmp_path, essay_text, training={"max_steps": 5, "save_strategy": "no"},
                         probe=probe_section(tmp_path, documents, every_steps=2))
    trainer = train(config)
    probed = [entry for entry in trainer.state.log_history if "probe_nll_own" in entry]
    assert [entry["step"] for entry in probed] == [0, 2, 4, 5]
    assert all(entry["probe_seconds"] > 0 and "probe_gap_other" in entry for entry in probed)
    assert trainer.model.training  # back in train mode after the last probe


def test_probe_does_not_change_what_training_learns(tiny_paths, tmp_path, essay_text, documents):
    plain = build_trainer(tiny_config(tiny_paths, tmp_path / "plain", essay_text, training={"save_strategy": "no"}))
    plain.train()
    probed = build_trainer(tiny_config(tiny_paths, tmp_path / "probed", essay_text, training={"save_strategy": "no"},
                                       probe=probe_section(tmp_path, documents, every_steps=1)))
    probed.train()
    for name, weight in trained_weights(plain).items():
        torch.testing.assert_close(trained_weights(probed)[name], weight, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("probe, message", [
    ({"every_steps": 10}, "probe.source is missing"),
    ({"every_steps": 10, "source": {"path": "x.jsonl", "holdout": {"by": ["id"], "percent": 25}}}, "side: dev"),
    ({"every_steps": 10, "source": {"path": "x.jsonl", "limt": 3}}, "did you mean 'limit'"),
])
def test_a_probe_without_held_out_documents_is_refused_by_name(probe, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"data": {"reasoning": [{"path": "x.jsonl"}]}, "probe": probe})
