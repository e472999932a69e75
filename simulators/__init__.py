"""Simulators: the synthetic world, public corpus, user populations and experiment runners.

These modules build the bundled base models and drive simulations of the library over
synthetic users. The library itself only reaches for :mod:`simulators.public_corpus`, lazily,
as its source of *public* data (the gates' held-out set, public replay, migration prompts).
"""

import personal  # noqa: F401  (loads the fast BLAS before any simulator imports mlx)
