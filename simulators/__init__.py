"""Simulators: the synthetic world, public corpus, user populations and experiment runners.

Nothing here is imported by the library itself; these modules build the bundled base models
and drive simulations of the library over synthetic users.
"""

import personal  # noqa: F401  (loads the fast BLAS before any simulator imports mlx)
