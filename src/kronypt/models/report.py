"""What a compression did: `CompressionReport` (printed by `kronypt compress`, saved as compression_report.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MatrixReport:
    """One compressed matrix: its factors, parameter counts and errors (relative to the weight, and to its outputs
    on the calibration inputs where it was fitted to them)."""

    name: str
    method: str
    a_shape: tuple[int, int] | None
    b_shape: tuple[int, int] | None
    factors: int | None
    rank: int | None
    params: int
    dense_params: int
    rel_error: float
    output_error: float | None = None


@dataclass
class CompressionReport:
    """What a compression did: the method and size it resolved to, per-matrix errors, the blocks dropped,
    parameter counts and calibration loss before and after, and notes worth a warning."""

    method: str = "kronecker"
    fit: str = "weights"
    allocation: str = "uniform"
    matrices: list[MatrixReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    scheme: str | None = None
    a_shape: tuple[int, int] | None = None
    factors: int | None = None  # None: a k per matrix (allocated), or not Kronecker
    init: str | None = None
    scalars: bool = False
    dropped_blocks: list[int] = field(default_factory=list)
    blocks_before: int = 0
    blocks_path: str | None = None  # where the family keeps its blocks ("model.layers"), for renumbering
    calibration: str | None = None
    calibration_tokens: int = 0
    calibration_loss_before: float | None = None
    calibration_loss_after: float | None = None
    sensitivity: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mean_rel_error(self) -> float:
        return sum(m.rel_error for m in self.matrices) / max(len(self.matrices), 1)

    def calibration_line(self) -> str | None:
        """One line: the calibration loss before and after, e.g. 'calibration loss 2.913 -> 3.402 (+16.8%) on
        32,768 tokens of data/x'."""
        before, after = self.calibration_loss_before, self.calibration_loss_after
        if before is None or after is None:
            return None
        return (f"calibration loss {before:.4f} -> {after:.4f} ({(after - before) / before:+.1%}) on "
                f"{self.calibration_tokens:,} tokens of {self.calibration}")

    def to_json(self) -> dict:
        payload = {key: value for key, value in asdict(self).items() if key not in ("matrices", "notes")}
        payload["a_shape"] = list(self.a_shape) if self.a_shape else None
        payload["allocated"] = self.method == "kronecker" and self.allocation == "uniform" and self.factors is None
        payload["mean_rel_error"] = self.mean_rel_error
        payload["matrices"] = [asdict(m) for m in self.matrices]
        return payload
