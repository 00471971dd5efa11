"""The trainer's side jobs, run at the end of every epoch in the order of :func:`epoch_callbacks`.

A callback sees the epoch's record (the line metrics.jsonl will get) and may add to it before the later ones run:
:class:`Evaluate` adds "eval", :class:`Stopwatch` fills "seconds", :class:`Record` appends the line,
:class:`Checkpoint` writes checkpoint.pt, :class:`Plot` redraws the run's plot, :class:`Report` prints a line.

Epoch -1 is the untrained encoder: when the run evaluates, its record ``{"epoch": -1, "stage": "init"}`` is
evaluated and recorded before the first epoch, and has no start, checkpoint, plot or printed line.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Optional

from mult.config import TrainConfig
from mult.io import save_torch_atomic, write_text_atomic
from mult.train.plots import plot_run

if TYPE_CHECKING:
    from mult.train.trainer import Trainer

UNTRAINED = -1  # the epoch of the record of the encoder before training


class Callback:
    """The protocol, with no-op hooks: ``on_epoch_start`` before an epoch's labels, ``on_epoch_end`` once it has
    trained, with its record (plus the record of epoch -1, which has no start)."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        pass


class Evaluate(Callback):
    """The test protocol every ``every`` epochs, after the last one, and on the untrained encoder."""

    def __init__(self, every: int, epochs: int):
        self.every, self.epochs = every, epochs

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            record["eval"] = trainer.evaluate()


class Stopwatch(Callback):
    """"seconds": the epoch's wall time from its start through the callbacks before this one."""

    def __init__(self) -> None:
        self.started: Optional[float] = None

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self.started = time.time()

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        if self.started is not None:
            record["seconds"] = round(time.time() - self.started, 2)
            self.started = None


class Record(Callback):
    """Append the record to metrics.jsonl, dropping the lines of epochs a resume is re-running."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        run = trainer.run
        kept = [m for m in run.metrics() if m.get("epoch", -1) < record["epoch"]]
        write_text_atomic(run.metrics_path, "".join(json.dumps(m) + "\n" for m in [*kept, record]))


class Checkpoint(Callback):
    """Write checkpoint.pt (atomically) after every trained epoch: what ``resume`` continues from."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        if epoch != UNTRAINED:
            save_torch_atomic(trainer.checkpoint_state(epoch), trainer.run.checkpoint_path)


class Plot(Callback):
    """Redraw the run's plot from metrics.jsonl."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        if epoch != UNTRAINED:
            plot_run(trainer.run)


class Report(Callback):
    """One line per epoch on the console."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict) -> None:
        if epoch != UNTRAINED:
            trainer.say(epoch_line(record))


def epoch_callbacks(cfg: TrainConfig, is_main: bool) -> list[Callback]:
    """The side jobs of a run, in order: every rank evaluates (rank 0 does the work) and times; rank 0 alone
    records, checkpoints, plots and reports."""
    callbacks: list[Callback] = [Evaluate(cfg.eval_every, cfg.epochs)] if cfg.eval_every > 0 else []
    callbacks.append(Stopwatch())
    if is_main:
        callbacks += [Record(), Checkpoint(), Plot(), Report()]
    return callbacks


def epoch_line(entry: dict) -> str:
    parts = [f"epoch {entry['epoch'] + 1} [{entry['stage']}] loss {entry.get('loss', float('nan')):.3f}",
             f"clusters v/r {entry['clusters_v']}/{entry['clusters_r']}"]
    for key in ("dbscan_v", "dbscan_r"):
        if key in entry and "ari" in entry[key]:
            parts.append(f"ARI {key[-1]} {entry[key]['ari']:.3f}")
    for name, row in entry.get("eval", {}).items():
        parts.append(f"{name} R1 {row['rank1']:.1f} mAP {row['mAP']:.1f}")
    parts.append(f"{entry['seconds']:.0f}s")
    return " | ".join(parts)
