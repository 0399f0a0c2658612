"""Checkpoint files: never half of one, and a damaged one never blocks a retry. (Killed and resumed
steps: tests/test_resume.py.)"""

import torch

from tlpipe.checkpoint import Checkpoint


def test_a_half_written_checkpoint_is_never_taken_for_a_whole_one(tmp_path):
    model = torch.nn.Linear(2, 2)
    Checkpoint(str(tmp_path), {"model": model}).save(3)
    (tmp_path / "checkpoint.partial").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    fresh = torch.nn.Linear(2, 2)
    assert Checkpoint(str(tmp_path), {"model": fresh}).restore() == 3
    assert torch.equal(fresh.weight, model.weight)


def test_a_truncated_checkpoint_is_said_and_the_step_starts_fresh(tmp_path, capsys):
    model = torch.nn.Linear(2, 2)
    Checkpoint(str(tmp_path), {"model": model}).save(3)
    whole = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(whole[: len(whole) // 2])  # a disk or copy that cut it short
    fresh = torch.nn.Linear(2, 2)
    before = fresh.weight.clone()
    assert Checkpoint(str(tmp_path), {"model": fresh}).restore() == 0
    assert torch.equal(fresh.weight, before)
    said = capsys.readouterr().out
    assert f"the checkpoint {tmp_path}/checkpoint.pt cannot be resumed (unreadable: " in said
    assert "starts again from its first epoch" in said
    assert not (tmp_path / "checkpoint.pt").exists()  # the next attempt does not meet it again

    Checkpoint(str(tmp_path), {"model": model}).save(2)
    assert Checkpoint(str(tmp_path), {"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)}).restore() == 0
    assert "cannot be resumed (optimizer)" in capsys.readouterr().out
