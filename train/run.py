"""A run directory: what `mult train` writes and what `mult evaluate` / `mult export` read.

```
RUN_DIR/
  config.json      the TrainConfig of the run
  checkpoint.pt    latest epoch: model, optimiser, memories, RNG states, next epoch (atomic writes)
  metrics.jsonl    one JSON line per epoch (losses, cluster counts, pseudo-label quality, evaluations)
  training.png     plots of the above
```
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from mult.config import TrainConfig
from mult.errors import MultError
from mult.model import PretrainedWeightsWarning, TwoStreamEncoder


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "training.png"

    def require(self) -> "RunDir":
        """This run directory, or a one-line error saying what is missing."""
        if not self.path.is_dir():
            raise MultError(f"{self.path}: no such run directory; pass the --out folder of `mult train`")
        for needed in (self.config_path, self.checkpoint_path):
            if not needed.is_file():
                raise MultError(f"{needed}: missing; is {self.path} a finished or resumable `mult train` run?")
        return self

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.config_path)

    def checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path, map_location)

    def metrics(self) -> Iterator[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return iter(())
        return (json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip())

    def load_model(self, device: str | torch.device = "cpu") -> TwoStreamEncoder:
        """The run's encoder with its latest weights, in eval mode."""
        self.require()
        cfg = self.config()
        model = bare_encoder(cfg.arch)
        model.load_state_dict(self.checkpoint(device)["model"])
        return model.to(device).eval()


def bare_encoder(arch: str) -> TwoStreamEncoder:
    """An encoder whose weights are about to be overwritten by a checkpoint (no random-init warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        return TwoStreamEncoder(arch=arch, pretrained=None)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MultError(f"{path}: no checkpoint here") from None
    except Exception as err:  # truncated or foreign file
        raise MultError(f"{path}: not a readable mult checkpoint ({type(err).__name__}); re-run or pick another") from None


def find_run_model(source: Path, device: str | torch.device = "cpu") -> tuple[TwoStreamEncoder, Optional[TrainConfig]]:
    """A run directory or a bare checkpoint file -> (model, config or None)."""
    source = Path(source)
    if source.is_dir():
        run = RunDir(source).require()
        return run.load_model(device), run.config()
    checkpoint = load_checkpoint(source, device)
    if "config" not in checkpoint or "model" not in checkpoint:
        raise MultError(f"{source}: not a mult checkpoint (no model/config inside)")
    cfg = TrainConfig.from_dict(checkpoint["config"])
    model = bare_encoder(cfg.arch)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), cfg
