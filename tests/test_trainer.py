"""The training engine on the `tiny` preset: a real run end to end, resume equivalence, and DDP."""

import json
import os
import re
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mult.cli.train import parse_sets as _parse_sets
from mult.config import TrainConfig, preset_config
from mult.errors import MultError
from mult.train.pseudo_labels import EpochLabels, ModalityClusters, label_diagnostics, make_epoch_labels
from mult.runs import RunDir
from mult.train.trainer import Trainer

warnings.filterwarnings("ignore", message=".*random weights.*")


def tiny(root, **changes):
    base = dict(data_root=str(root), epochs=3, stage_one_epochs=3, eval_every=0, association="none")
    base.update(changes)
    return preset_config("tiny", **base)


def test_dcl_run_writes_a_complete_run_directory(synth_sysu_small, tmp_path):
    cfg = tiny(synth_sysu_small, epochs=2, stage_one_epochs=2, eval_every=2, eval_trials=2)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    run = RunDir(tmp_path / "run").require()
    lines = list(run.metrics())
    assert [m["epoch"] for m in lines] == [-1, 0, 1]  # -1 = the untrained encoder's evaluation
    assert all(m["clusters_v"] > 0 and m["clusters_r"] > 0 for m in lines[1:])
    assert "ari" in lines[1]["dbscan_v"]  # ground truth is known on SynthVI
    assert set(result) == {"sysu-all", "sysu-indoor"} and 0 <= result["sysu-all"]["mAP"] <= 100
    assert run.plot_path.stat().st_size > 10_000
    assert run.config() == cfg
    assert run.checkpoint()["epoch"] == 2


def test_resume_across_the_stage_boundary_gives_identical_weights(synth_sysu_small, tmp_path):
    # epochs 0-1: DCL; epoch 2: MULT + AMIRL + OCLR with the six memories
    cfg = tiny(synth_sysu_small, epochs=3, stage_one_epochs=2, association="mult")
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()

    interrupted = Trainer(cfg, tmp_path / "b", progress=False)
    interrupted.fit(stop_after=2)  # as if killed during epoch 3: the last checkpoint is after epoch 2
    assert RunDir(tmp_path / "b").checkpoint()["epoch"] == 2
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.start_epoch == 2
    resumed.fit()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = list(RunDir(tmp_path / "b").metrics())
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    assert [m["stage"] for m in lines] == ["dcl", "dcl", "mult"]
    assert {"loss_intra", "loss_cross", "loss_oclr", "cross_acc_v2r", "cross_acc_r2v", "cross_acc_v2r_initial",
            "cross_acc_r2v_initial", "propagation"} <= set(lines[2])
    assert "propagation" not in lines[1]  # no label propagation in stage 1
    for space in ("visible_space", "infrared_space"):  # MULT's convergence, per epoch (METHOD.md §4.5)
        record = lines[2]["propagation"][space]
        assert 1 <= record["steps"] == len(record["change"]) <= cfg.lp_iters
    assert set(RunDir(tmp_path / "b").checkpoint()["memories"]) == {"v", "r", "rcm", "vcm", "va", "ra"}


def test_memory_update_option_defaults_to_official_and_is_checked():
    assert preset_config("tiny").memory_update == "official"
    cfg = TrainConfig.from_dict({**preset_config("tiny").to_dict(), **_parse_sets(["memory_update=after-step"])})
    assert cfg.memory_update == "after-step"
    with pytest.raises(MultError, match=re.escape("memory_update must be one of official | after-step, got 'later'")):
        preset_config("tiny", memory_update="later")
    saved_before = preset_config("tiny").to_dict()
    del saved_before["memory_update"]  # a run saved before the option existed wrote its memories after the step
    assert TrainConfig.from_dict(saved_before).memory_update == "after-step"


def test_oracle_association_reads_the_truth_only_as_asked(tmp_path):
    # six persons, ten tight images each per modality, the infrared side listed in another person order:
    # the oracle links every cluster to its person's (cross-label accuracy 1), and with accuracy 0 to another's
    rng = np.random.default_rng(0)
    persons = rng.standard_normal((6, 32))
    pids_v, pids_r = np.repeat(np.arange(6), 10), np.repeat([3, 5, 0, 1, 4, 2], 10)

    def feats(pids):
        x = persons[pids] + 0.01 * rng.standard_normal((pids.size, 32))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    fv, fr = feats(pids_v), feats(pids_r)
    for accuracy, expected in ((1.0, 1.0), (0.0, 0.0)):
        cfg = tiny(tmp_path, association="oracle", oracle_accuracy=accuracy, k1=8, k2=3, min_samples=3)
        labels = make_epoch_labels(fv, fr, cfg, "mult", true_ids=(pids_v, pids_r))
        diag = label_diagnostics(labels, pids_v, pids_r)
        assert labels.visible.num_clusters == labels.infrared.num_clusters == 6
        assert diag["cross_acc_v2r"] == diag["cross_acc_r2v"] == expected
    with pytest.raises(ValueError, match="true ids"):
        make_epoch_labels(fv, fr, cfg, "mult")


def test_cross_label_accuracy_before_and_after_mult_by_hand():
    # two persons, two images each per modality; infrared cluster 0 is person 1. Trained-on cross labels all
    # right; MULT's initial labels: visible [1, 0, 0, 0] (3 of 4 right), infrared [0, 0, 0, 0] (2 of 4 right)
    def clusters():
        return ModalityClusters(np.array([0, 0, 1, 1]), np.zeros((2, 3), np.float32), sp.csr_matrix((4, 4)))

    pids_v, pids_r = np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])
    right = np.array([1, 1, 0, 0])
    labels = EpochLabels(clusters(), clusters(), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), right, right,
                         initial_cm_labels={"visible_to_infrared": np.array([1, 0, 0, 0]),
                                            "infrared_to_visible": np.zeros(4, np.int64)})
    diag = label_diagnostics(labels, pids_v, pids_r)
    assert diag["cross_acc_v2r"] == diag["cross_acc_r2v"] == 1.0
    assert (diag["cross_acc_v2r_initial"], diag["cross_acc_r2v_initial"]) == (0.75, 0.5)
    labels.initial_cm_labels = {}  # the baselines have no "before": nothing is logged for it
    assert not {k for k in label_diagnostics(labels, pids_v, pids_r) if k.endswith("_initial")}


WORKER = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
import torch
from mult.config import TrainConfig
from mult.train.trainer import Trainer

class Recording(Trainer):
    seen = []
    def pseudo_labels(self, epoch, stage):
        labels = super().pseudo_labels(epoch, stage)
        self.seen.append([labels.labels_v.tolist(), labels.labels_r.tolist()])
        return labels

    def train_epoch(self, epoch, stage, labels, mems):
        losses = super().train_epoch(epoch, stage, labels, mems)
        self.memories = {name: memory.features.cpu() for name, memory in mems.items()}
        return losses

cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
trainer = Recording(cfg, Path(sys.argv[2]), progress=False)
trainer.fit()
out = Path(sys.argv[3]) / f"rank{trainer.dist.rank}.pt"
torch.save({"world": trainer.dist.world_size, "labels": trainer.seen, "model": trainer.model.state_dict(),
            "memories": trainer.memories}, out)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_agree_on_labels_and_weights(synth_sysu_small, tmp_path):
    # epoch 0 DCL, epoch 1 MULT: the six memories written inside backward, gathering every rank's batch
    cfg = tiny(synth_sysu_small, epochs=2, stage_one_epochs=1, association="mult", workers=0)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), json.dumps(cfg.to_dict()), str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["labels"] == r1["labels"] and len(r0["labels"]) == 2
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    # weights agree even if memories do not (DDP averages the gradients): the memories must agree by themselves
    assert set(r0["memories"]) == {"v", "r", "rcm", "vcm", "va", "ra"}
    assert all(torch.equal(r0["memories"][k], r1["memories"][k]) for k in r0["memories"])
