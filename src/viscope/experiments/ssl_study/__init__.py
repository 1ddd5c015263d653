"""``viscope ssl-study``: what self-supervised pre-training and auxiliary objectives do
to accuracy, explanations and invariance. See :mod:`viscope.experiments.ssl_study.run`."""
