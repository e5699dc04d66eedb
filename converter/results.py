"""What a conversion found about each variant, typed; ``to_dict()`` gives its entry in ``conversion.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from converter.checks import Comparison, Latency
from converter.graph import GraphFacts
from edge_app.runtime.interpreter import Kernels


@dataclass(frozen=True)
class KeptFloat:
    """The ops the CPU's int8 model keeps in float so XNNPACK runs it as one partition, what it cost and bought."""

    ops: dict[str, int]
    bytes: int
    partitions_full_integer: int
    partitions: int
    full_integer_p50_ms: float
    p50_ms: float
    full_integer_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Repair:
    """How the int8 repair went: why it stopped (``result``: passed, budget or latency) and every step tried."""

    result: str
    layer_budget: int
    latency_limit_ms: float
    kept_layers: list[str]
    steps: list[dict]
    worst_layers: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Variant(Comparison):
    """One converted model and its proof: its :class:`~converter.checks.Comparison` with the float model, then what
    it is and how fast it ran.

    Made by the checks, then completed as the conversion goes on: the size once the proof is embedded,
    ``kept_float`` and ``repair`` (int8), ``unknown`` (its reference set's report), ``field`` (its figures on
    field photos) and ``size_vs_fp32``.
    """

    quant: str
    description: str
    path: str
    size_bytes: int
    io: dict
    latency: Latency
    graph: GraphFacts
    kernels: Kernels | None
    warnings: list[str]
    failures: list[str]
    passed: bool
    size_breakdown: dict[str, int] | None = None
    kept_float: KeptFloat | None = None
    repair: Repair | None = None
    unknown: dict | None = None
    field: dict | None = None
    size_vs_fp32: float | None = None

    def to_dict(self) -> dict:
        """The ``conversion.json`` entry: sections a variant lacks are left out (``size_vs_fp32`` is null instead)."""
        out = {"quant": self.quant, "description": self.description, "path": self.path,
               "size_bytes": self.size_bytes, "io": self.io, "accuracy": self.accuracy,
               "accuracy_drop_pp": self.accuracy_drop_pp, "drop_test": self.drop_test.to_dict(),
               "agreement": self.agreement, "per_class_accuracy": self.per_class_accuracy,
               "per_class_delta_pp": self.per_class_delta_pp, "confusion_matrix": self.confusion_matrix,
               "latency_ms": self.latency.to_dict(), "graph": self.graph.to_dict(),
               "kernels": None if self.kernels is None else self.kernels.to_dict(), "warnings": self.warnings,
               "failures": self.failures, "passed": self.passed, "size_breakdown": self.size_breakdown}
        if self.kept_float is not None:
            out["kept_float"] = self.kept_float.to_dict()
        if self.repair is not None:
            out["repair"] = self.repair.to_dict()
        if self.unknown is not None:
            out["unknown"] = self.unknown
        if self.field is not None:
            out["field"] = self.field
        out["size_vs_fp32"] = self.size_vs_fp32
        return out
