"""personal_sim: the synthetic world, public corpus, user populations and experiment runners.

These modules build the bundled base models and drive simulations of the library over
synthetic users (``personal simulate``, ``make demo``). The library never imports them: a
simulation passes its public corpus to ``Personalizer.open(..., public_data=...)`` like any app
(:mod:`personal_sim.public_data`). Installed as ``personal_sim`` (it was ``simulators``, too
generic a name for a top-level package).
"""

import personal  # noqa: F401  (loads the fast BLAS before any simulator imports mlx)
