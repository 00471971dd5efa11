"""Supervised source pre-training (mult.train.pretrain): the ImageNet stand-in used before unsupervised runs."""

import json
import warnings

import numpy as np
import pytest
import torch

from mult.cli import main
from mult.config import preset_config
from mult.errors import MultError
from mult.model import TwoStreamEncoder
from mult.train.pretrain import ENCODER_FILE, contiguous_identities, identity_loss, pretrain_supervised

warnings.filterwarnings("ignore", message=".*random weights.*")


def test_identities_map_to_one_shared_class_per_person():
    y_v, y_r, n = contiguous_identities(np.array([7, 3, 7, 12]), np.array([12, 5, 3]))
    assert n == 4  # persons 3, 5, 7, 12
    assert y_v.tolist() == [2, 0, 2, 3] and y_r.tolist() == [3, 1, 0]


def test_unlabelled_or_modality_disjoint_sources_are_refused():
    with pytest.raises(MultError, match="person ids"):
        contiguous_identities(np.array([1, -1]), np.array([1]))
    with pytest.raises(MultError, match="both modalities"):
        contiguous_identities(np.array([1, 2]), np.array([3]))


def test_identity_loss_is_label_smoothed_cross_entropy():
    # Two classes, logits (0, 0): the loss is log 2 whatever the target. Logits (+inf-like, 0) for target 0:
    # the smoothed target puts 0.05 on class 1, so the loss is 0.05 * (margin) for a large margin.
    assert identity_loss(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(np.log(2), abs=1e-6)
    margin = 20.0
    loss = identity_loss(torch.tensor([[margin, 0.0]]), torch.tensor([0])).item()
    assert loss == pytest.approx(0.05 * margin, rel=1e-3)


def test_pretraining_lowers_the_loss_and_writes_a_loadable_encoder(synth_sysu_small, tmp_path):
    cfg = preset_config("tiny", data_root=str(synth_sysu_small), num_ids=4, num_instances=2, lr=1e-3)
    summary = pretrain_supervised(cfg, tmp_path / "source", steps=12, progress=False, log_every=4)
    log = [json.loads(line) for line in (tmp_path / "source" / "pretrain.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [4, 8, 12]
    assert log[-1]["loss"] < log[0]["loss"]  # it learns the identities of its batches
    assert (tmp_path / "source" / "pretrain.png").stat().st_size > 5_000
    assert summary["identities"] == 16 and summary["steps"] == 12

    loaded = TwoStreamEncoder("resnet18", pretrained=tmp_path / "source" / ENCODER_FILE)
    state = torch.load(tmp_path / "source" / ENCODER_FILE)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(MultError, match="exists already"):  # never overwrites a finished pre-training
        pretrain_supervised(cfg, tmp_path / "source", steps=1, progress=False)


def test_cli_pretrain_then_train_from_it(synth_sysu_small, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--preset", "tiny", "--data-root", str(synth_sysu_small), "--out", str(tmp_path / "src"),
              "--steps", "2", "--json"])
    assert exc.value.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoder"] == str(tmp_path / "src" / ENCODER_FILE)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "tiny", "--data-root", str(synth_sysu_small), "--out", str(tmp_path / "run"),
              "--stage", "dcl", "--epochs", "1", "--stage-one-epochs", "1", "--eval-every", "0",
              "--pretrained", summary["encoder"]])
    assert exc.value.code in (0, None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pretrained"] == summary["encoder"]
