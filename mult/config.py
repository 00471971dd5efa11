"""One typed configuration per training run, with presets, saved in the run directory.

Defaults are the paper's code (METHOD.md §2, §4, §6, §7). Presets change only what they name; every field
can be overridden from the command line (``mult train --set field=value`` or the named options).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from mult.errors import MultError
from mult.io import write_text_atomic

#: When the cluster memories are written (TrainConfig.memory_update; mult.train.memory explains both).
MEMORY_UPDATES = ("official", "after-step")


@dataclass
class TrainConfig:
    # data
    dataset: str = "sysu"  # sysu | regdb
    data_root: str = ""
    regdb_split: int = 1
    height: int = 288
    width: int = 144
    workers: int = 4
    # model
    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | mobilenetv2 (mult.backbones)
    pretrained: Optional[str] = "imagenet"  # "imagenet", a .pth path, or None for random init
    calibrate_bn: bool = False  # re-estimate BN statistics before epoch 0 (see mult.train.precise_bn)
    stage_one_augment: str = "paper"  # paper: METHOD.md §3.2 stage-1 pipelines; light: the milder stage-2 ones
    # schedule (absolute epochs, METHOD.md §2)
    epochs: int = 90
    stage_one_epochs: int = 40
    iters_stage_one: int = 300
    iters_stage_two: int = 200
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (20, 60, 80)
    lr_gamma: float = 0.1
    # batches (§3.3): P pseudo-identities x K instances per modality
    num_ids: int = 12
    num_instances: int = 12
    # clustering (§5)
    eps: float = 0.6
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    # memories (§6)
    temp: float = 0.05
    momentum: float = 0.1
    momentum_cross: float = 0.1
    # official: momentum writes inside backward in autograd's order (the official CM, METHOD.md §6.1);
    # after-step: after optimizer.step() in forward order, gradients against the pre-step memory (before issue 15)
    memory_update: str = "official"
    # label transfer (§4) and OCLR (§7)
    association: str = "mult"  # mult | ot | hungarian | none | oracle (diagnostic: true ids)
    oracle_accuracy: float = 1.0  # share of correct cluster links kept by association "oracle"
    alpha: float = 0.2
    beta: float = 0.7
    ot_lambda: float = 25.0
    lp_iters: int = 20
    lp_tol: float = 1e-2
    homogeneous: bool = True
    oclr: bool = True
    oclr_ratio: float = 0.2
    oclr_detach: bool = False
    # evaluation and bookkeeping
    eval_every: int = 10
    eval_trials: int = 10
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # used only on CUDA
    preset: str = "sysu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory_update not in MEMORY_UPDATES:
            raise MultError(f"memory_update must be one of {' | '.join(MEMORY_UPDATES)}, got {self.memory_update!r}; "
                            "e.g. --set memory_update=after-step")

    def lr_at(self, epoch: int) -> float:
        """Step schedule on the absolute epoch index (stage 2 starts at 3.5e-5, never 3.5e-4)."""
        drops = sum(epoch >= m for m in self.lr_milestones)
        return self.lr * self.lr_gamma**drops

    def stage_of(self, epoch: int) -> str:
        return "dcl" if epoch < self.stage_one_epochs else "mult"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lr_milestones"] = list(self.lr_milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)} | {"depth"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MultError(f"unknown config field(s) {', '.join(unknown)}; see `mult train --help`")
        data = dict(data)
        if "depth" in data:  # the field's name before MobileNetV2 joined the ResNets
            data.setdefault("arch", data.pop("depth"))
        # runs saved before the field existed wrote their memories after the step: resume them the same way
        data.setdefault("memory_update", "after-step")
        if "lr_milestones" in data:
            data["lr_milestones"] = tuple(data["lr_milestones"])
        return cls(**data)

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise MultError(f"{path}: no config.json; is this a run directory made by `mult train`?") from None
        except json.JSONDecodeError as err:
            raise MultError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


# Presets change only what they list. `synth-demo` and `tiny` are CPU-sized. synth-demo is what `mult demo` trains
# (docs/RESULTS.md, "The demo's model"): ImageNet MobileNetV2 (the ImageNet weights that install from the package
# registry), 128x64, 6 DCL epochs + 2 MULT epochs of 25 steps, the paper's 10x lower stage-2 rate. Departures from
# the paper, each measured on SynthVI: DBSCAN eps 0.4 with k1 15 / k2 4 (eps 0.6 merges everything on this small
# set; 0.3 leaves too few clusters, 0.45-0.5 merges infrared people), the milder stage-2 augmentations in stage 1,
# and no BatchNorm re-estimation before epoch 0 (it lowers the ImageNet start's accuracy here).
PRESETS: dict[str, dict[str, Any]] = {
    "sysu": {},
    "regdb": {"dataset": "regdb", "eps": 0.3, "iters_stage_one": 100, "iters_stage_two": 100},
    "synth-demo": {
        "arch": "mobilenetv2", "pretrained": "imagenet", "calibrate_bn": False, "height": 128, "width": 64,
        "workers": 2, "epochs": 8, "stage_one_epochs": 6, "iters_stage_one": 25, "iters_stage_two": 25,
        "lr_milestones": (6,), "num_ids": 6, "num_instances": 4, "k1": 15, "k2": 4, "eps": 0.4,
        "stage_one_augment": "light", "eval_every": 4,
    },
    "tiny": {
        "arch": "resnet18", "pretrained": None, "calibrate_bn": True, "height": 64, "width": 32, "workers": 0,
        "epochs": 4, "stage_one_epochs": 2, "iters_stage_one": 2, "iters_stage_two": 2,
        "lr_milestones": (100,), "num_ids": 2, "num_instances": 2, "k1": 6, "k2": 3, "eps": 0.6,
        "min_samples": 2, "eval_every": 2, "eval_trials": 2,
    },
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with ``overrides`` applied (None values are ignored)."""
    if name not in PRESETS:
        raise MultError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(preset=name, **PRESETS[name]).with_overrides(**overrides)
