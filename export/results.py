"""What :func:`mult.export.repository.write_model_repository` returns: the version it wrote and, per model, the
files and parity figures (``mult export --json`` prints :meth:`ExportResult.to_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mult.export.layout import INPUT_NAME, OUTPUT_NAME
from mult.export.onnx_export import ParityReport


@dataclass(frozen=True)
class ExportedModel:
    """One served model of a repository version."""

    name: str
    modality: str
    version: int
    onnx_path: Path
    config_path: Path
    manifest_path: Path
    parity: ParityReport
    parity_images: str
    precision: str = "fp32"
    #: FP32 export's parity (FP16/INT8 versions only; ``parity`` is then the converted model's).
    parity_fp32: Optional[ParityReport] = None
    calibration: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "modality": self.modality,
            "precision": self.precision,
            "onnx": str(self.onnx_path),
            "config": str(self.config_path),
            "manifest": str(self.manifest_path),
            "parity": {**self.parity.to_dict(), "images": self.parity_images},
        }
        if self.parity_fp32 is not None:
            data["parity_fp32"] = {**self.parity_fp32.to_dict(), "images": self.parity_images}
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        return data


@dataclass(frozen=True)
class ExportResult:
    """What :func:`write_model_repository` wrote."""

    repo: Path
    version: int
    height: int
    width: int
    embedding_size: int
    models: dict[str, ExportedModel] = field(default_factory=dict)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``mult export --json``)."""
        return {
            "repo": str(self.repo),
            "version": self.version,
            "precision": self.precision,
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, self.height, self.width, 3]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, self.embedding_size]},
            "models": {name: m.to_dict() for name, m in self.models.items()},
        }
