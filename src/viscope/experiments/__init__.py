"""Studies that combine the jobs (resumable, one run folder each)."""

from viscope.experiments.config import ALL_FAMILIES, MatrixConfig, ModelConfig, load_config
from viscope.experiments.matrix import MatrixResult, run_matrix

__all__ = ["ALL_FAMILIES", "MatrixConfig", "MatrixResult", "ModelConfig", "load_config",
           "run_matrix"]
