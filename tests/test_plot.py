"""The training curves of a model trained in stages, as one chain."""

import json

import pytest

from training.plot import chain_log_histories, main


FIRST = [{"probe_gap_nearby": 0.0, "step": 0}, {"loss": 3.0, "step": 5}, {"loss": 2.5, "step": 10},
         {"train_runtime": 60.0, "step": 10}]
SECOND = [{"probe_gap_nearby": 0.4, "step": 0}, {"loss": 2.0, "step": 4}]


def test_each_stage_continues_after_the_last_step_of_the_stages_before_it():
    chained = chain_log_histories([FIRST, SECOND, SECOND])
    assert [entry["step"] for entry in chained] == [0, 5, 10, 10, 10, 14, 14, 18]
    assert chained[4] == {"probe_gap_nearby": 0.4, "step": 10}  # values kept, only the step moves


def test_the_command_writes_the_chained_history_and_its_plot(tmp_path):
    for name, history in (("a", FIRST), ("b", SECOND)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log_history.json").write_text(json.dumps(history))
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "chain")])
    written = json.loads((tmp_path / "chain" / "log_history.json").read_text())
    assert [entry["step"] for entry in written] == [0, 5, 10, 10, 10, 14]
    assert (tmp_path / "chain" / "loss.png").stat().st_size > 10_000


def test_the_command_names_a_folder_without_a_log_history(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--output", str(tmp_path / "chain")])
    assert f"no log_history.json in {tmp_path}" in capsys.readouterr().err
