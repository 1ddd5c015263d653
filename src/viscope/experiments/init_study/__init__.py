"""``viscope init-study``: does a data-driven first-layer / patch-embedding initialisation
make training converge sooner, and in which conditions? See
:mod:`viscope.experiments.init_study.run`."""
