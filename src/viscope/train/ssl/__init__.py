"""Self-supervised training: auxiliary objectives beside the classification loss.

``"recon"`` (:class:`~viscope.train.ssl.reconstruction.Reconstruction`) is the one
reconstruction branch of viscope: FGR-Net's own UNet decoder
(:mod:`viscope.models.quality`) or, on any other backbone, a light decoder on its
features; ``fit(objectives=["ce:0.5", "recon:0.5"])`` trains it.

Pre-training without labels: :data:`~viscope.train.ssl.methods.SSL_METHODS` (SimCLR,
BYOL, DINO, MAE with lightly) and :func:`viscope.train.ssl.pretrain.pretrain` (not
exported here: the submodule of the same name would shadow it once imported).
"""

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "LightDecoder": "viscope.train.ssl.reconstruction",
    "Reconstruction": "viscope.train.ssl.reconstruction",
    "reconstruct": "viscope.train.ssl.reconstruction",
    "SSL_METHODS": "viscope.train.ssl.methods",
    "SSLMethod": "viscope.train.ssl.methods",
    "create_method": "viscope.train.ssl.methods",
    "pooled_features": "viscope.train.features",
    "PretrainResult": "viscope.train.ssl.pretrain",
}
__all__ = attach(__name__, _EXPORTS)
