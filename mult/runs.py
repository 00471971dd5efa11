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
from collections.abc import Mapping
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
        load_weights(model, model_weights(self.checkpoint(device), self.checkpoint_path), self.checkpoint_path)
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


_EXPECTED = ("expected a dict with 'model' (the encoder's weights) and 'config' (the run's settings), as "
             "`mult train` writes")


def _describe(obj: Any) -> str:
    """A few words on what a file held instead of a mult checkpoint."""
    if isinstance(obj, torch.Tensor):
        return f"a bare tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))
        return f"a dict with keys {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}" if keys else "an empty dict"
    return f"a value of type {type(obj).__name__}"


def model_weights(checkpoint: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The encoder state dict inside a loaded checkpoint; anything else is one line naming ``path``."""
    state = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = _describe(checkpoint) if state is None else f"a dict whose 'model' is {_describe(state)}"
        raise MultError(f"{path}: not a mult checkpoint: {_EXPECTED}; found {found}")
    return state


def load_weights(model: TwoStreamEncoder, state: Mapping[str, torch.Tensor], path: Path) -> TwoStreamEncoder:
    """Load ``state`` into ``model`` exactly (every key, every shape), or one line on how they differ.

    Exact, because a deeper ResNet's weights hold all of a shallower one's keys with the same shapes: a
    lenient load would quietly export half of another network.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if resized:
        key = resized[0]
        detail = f"{key} is {tuple(state[key].shape)} where a {model.arch} has {tuple(expected[key].shape)}"
    elif missing:
        detail = f"{len(missing)} {model.arch} weights missing, first {missing[0]}"
    elif unexpected:
        detail = f"{len(unexpected)} weights a {model.arch} does not have, first {unexpected[0]}"
    else:
        model.load_state_dict(state)
        return model
    raise MultError(f"{path}: the weights do not fit the {model.arch} encoder its config names ({detail}); a "
                    "checkpoint of another architecture or depth? export it together with its own config")


def find_run_model(source: Path, device: str | torch.device = "cpu") -> tuple[TwoStreamEncoder, Optional[TrainConfig]]:
    """A run directory or a bare checkpoint file -> (model, config or None)."""
    source = Path(source)
    if source.is_dir():
        run = RunDir(source).require()
        return run.load_model(device), run.config()
    checkpoint = load_checkpoint(source, device)
    state = model_weights(checkpoint, source)
    if not isinstance(checkpoint.get("config"), Mapping):
        config = "" if "config" not in checkpoint else f", whose 'config' is {_describe(checkpoint['config'])}"
        raise MultError(f"{source}: not a mult checkpoint: {_EXPECTED}; found {_describe(checkpoint)}{config}")
    try:
        cfg = TrainConfig.from_dict(dict(checkpoint["config"]))
    except MultError as err:  # a bad or unknown field: say which file holds it
        raise MultError(f"{source}: {err}") from None
    model = load_weights(bare_encoder(cfg.arch), state, source)
    return model.to(device).eval(), cfg
