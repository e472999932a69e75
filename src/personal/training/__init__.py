"""Training rounds over an encrypted store: the DP round, and the empirical canary audit."""
