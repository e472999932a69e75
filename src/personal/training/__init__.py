"""Training code, in one place: the DP rounds over an encrypted store and what they rely on.

* the DP round: :mod:`~personal.training.runner` (a store's rounds, top to bottom),
  :mod:`~personal.training.round` (one round over the log), :mod:`~personal.training.lock`,
  :mod:`~personal.training.charged` (what a round had charged when the disk filled up);
* continual learning: :mod:`~personal.training.continual` (a round's candidates and free
  hooks), :mod:`~personal.training.replay` (the replay buffer of past units),
  :mod:`~personal.training.ewc` (online EWC);
* the gates: :mod:`~personal.training.gates`, :mod:`~personal.training.validation`;
* base updates: :mod:`~personal.training.migration`;
* the empirical audit's gradient canaries: :mod:`~personal.training.gradient_canary` (the
  audit itself opens a copy of the store through the facade: :mod:`personal.canary_audit`);
* non-private training on public data only: :mod:`~personal.training.population` (the
  population adapter). The plain fitting loop it and distillation share is model maths below
  this layer: :mod:`personal.model.fit`.

The DP step itself (clipping and noise) is :mod:`personal.privacy.dpsgd`.
"""
