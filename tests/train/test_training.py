"""Training end to end on a tiny target: the loss falls, --resume equals an uninterrupted run, CLI errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dflash_trt.errors import UserError
from dflash_trt.train import cli
from dflash_trt.train.trainer import Trainer, train


def test_training_reduces_loss(tiny_target, tiny_data, tiny_recipe, tmp_path):
    trainer = Trainer(tiny_recipe(tiny_target, tiny_data, tmp_path / "out", steps=20, eval_every=10, checkpoint_every=10, lr=1e-2, min_lr=1e-3))
    trainer.val_seqs = trainer.train_seqs[:8]  # the tiny random data is too small to generalise; fit it
    before = trainer.evaluate()
    trainer.run()
    after = trainer.log["val"][-1]
    assert after["loss"] < 0.9 * before["loss"]
    assert after["tau_est"] > before["tau_est"]
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["step"] == 20 and len(log["train"]) == 20


def test_resume_equals_uninterrupted_run(tiny_target, tiny_data, tiny_recipe, tmp_path):
    full = tiny_recipe(tiny_target, tiny_data, tmp_path / "full")
    train(full)
    parted = tiny_recipe(tiny_target, tiny_data, tmp_path / "parted")
    train(parted, stop_at=4)
    assert torch.load(tmp_path / "parted" / "train_state.pt", weights_only=False)["step"] == 4
    train(parted, resume=True)
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=False)
    b = torch.load(tmp_path / "parted" / "train_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["drafter"][k], b["drafter"][k]) for k in a["drafter"])
    assert a["log"]["train"] == b["log"]["train"]
    with pytest.raises(UserError, match="--resume"):
        train(full)


def test_cli_registers_train_and_reports_user_errors(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(UserError, match="missing.yaml"):
        args.func(args)
