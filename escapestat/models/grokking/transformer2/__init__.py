"""``kind = "transformer2"``: the two-layer decoder of Power et al. (2022) and Grokfast."""
