"""One typed configuration per training run, with presets, saved in the run directory.

Defaults are the paper's code (METHOD.md §2, §4, §6, §7). Presets change only what they name; every field
can be overridden from the command line (``mult train --set field=value`` or the named options).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

from mult.errors import MultError
from mult.io import write_text_atomic

#: When the cluster memories are written (TrainConfig.memory_update; mult.train.memory explains both).
MEMORY_UPDATES = ("official", "after-step")
#: Cross-modality associations of stage 2 (mult.train.pseudo_labels).
ASSOCIATIONS = ("mult", "ot", "hungarian", "none", "oracle")

#: A field's check and the words that say what it accepts.
Rule = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the integer 1 here


def _integer(lo: int, hi: Optional[int] = None) -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    return (lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi)), text


def _number(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Rule:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and v <= hi

    if hi == math.inf:
        return check, f"a number {'>' if lo_open else '>='} {lo:g}"
    return check, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"


def _choice(*names: str) -> Rule:
    return (lambda v: isinstance(v, str) and v in names), "one of " + " | ".join(names)


_BOOL: Rule = (lambda v: isinstance(v, bool), "true or false")
_TEXT: Rule = (lambda v: isinstance(v, str), "text")


@functools.lru_cache(maxsize=None)
def field_rules() -> dict[str, Rule]:
    """What each TrainConfig field accepts: checked when a config is built, so a bad value stops a run
    before any data is read (not minutes later, inside the step that first uses it)."""
    from mult.backbones import ARCHS  # imports torch: only when a config is built
    from mult.datasets import DATASETS

    unit, positive = _number(0.0, 1.0), _number(0.0, lo_open=True)
    return {
        "dataset": _choice(*DATASETS), "data_root": _TEXT, "regdb_split": _integer(1, 10),
        "height": _integer(16), "width": _integer(16),  # the backbones downsample 16x (see export's size check)
        "workers": _integer(0), "arch": _choice(*ARCHS),
        "pretrained": ((lambda v: v is None or (isinstance(v, str) and bool(v.strip()))),
                       "imagenet, none (null) or the path of a .pth file"),
        "calibrate_bn": _BOOL, "stage_one_augment": _choice("paper", "light"),
        "epochs": _integer(1), "stage_one_epochs": _integer(0), "iters_stage_one": _integer(1),
        "iters_stage_two": _integer(1), "lr": positive, "weight_decay": _number(0.0),
        "lr_milestones": ((lambda v: isinstance(v, (list, tuple)) and all(_is_int(m) and m >= 0 for m in v)),
                          "a list of epochs (integers >= 0), e.g. [20,60]"),
        "lr_gamma": _number(0.0, 1.0, lo_open=True), "num_ids": _integer(1), "num_instances": _integer(1),
        "eps": positive, "min_samples": _integer(1), "k1": _integer(1), "k2": _integer(1),
        "temp": positive, "momentum": unit, "momentum_cross": unit, "memory_update": _choice(*MEMORY_UPDATES),
        "association": _choice(*ASSOCIATIONS), "oracle_accuracy": unit, "alpha": unit, "beta": unit,
        "ot_lambda": positive, "lp_iters": _integer(1), "lp_tol": _number(0.0), "homogeneous": _BOOL,
        "oclr": _BOOL, "oclr_ratio": positive, "oclr_detach": _BOOL, "eval_every": _integer(0),
        "eval_trials": _integer(1), "seed": _integer(0),
        "device": ((lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None),
                   "auto | cpu | cuda | cuda:N"),
        "amp": _BOOL, "preset": _TEXT,
    }


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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One-line MultError for the first field outside its range (:func:`field_rules`); integers given for
        float fields become floats and a milestone list a tuple. Runs whenever a config is built or replaced."""
        rules = field_rules()
        for f in fields(self):
            value = getattr(self, f.name)
            check, accepted = rules[f.name]
            if not check(value):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                raise MultError(f"config field {f.name} must be {accepted}, got {value!r} (default {default!r})")
            if f.type == "float":
                setattr(self, f.name, float(value))
        self.lr_milestones = tuple(self.lr_milestones)

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
        known = {f.name for f in fields(cls)} | {"depth", "extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MultError(f"unknown config field(s) {', '.join(unknown)}; see `mult train --help`")
        data = dict(data)
        if data.pop("extra", None):  # a free-form field nothing ever read; runs saved with it wrote {}
            raise MultError("config field extra is no longer read; move its values to real fields (--set name=value)")
        if "depth" in data:  # the field's name before MobileNetV2 joined the ResNets
            data.setdefault("arch", data.pop("depth"))
        # runs saved before the field existed wrote their memories after the step: resume them the same way
        data.setdefault("memory_update", "after-step")
        return cls(**data)  # validate() checks every value (and makes lr_milestones a tuple)

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
        except MultError as err:  # a bad or unknown field: say which file holds it
            raise MultError(f"{path}: {err}") from None


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
