"""``viscope quality``: the interpretable fundus image-quality model (FGR-Net) and its
validation with explanation methods. See :mod:`viscope.experiments.quality.run`."""
