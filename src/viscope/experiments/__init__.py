"""Studies that combine the jobs (resumable, one run folder each)."""

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "ALL_FAMILIES": "viscope.experiments.config",
    "MatrixConfig": "viscope.experiments.config",
    "ModelConfig": "viscope.experiments.config",
    "load_config": "viscope.experiments.config",
    "MatrixResult": "viscope.experiments.matrix",
    "run_matrix": "viscope.experiments.matrix",
}
__all__ = attach(__name__, _EXPORTS)
