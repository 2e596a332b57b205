"""``kind = "transformer"``: Nanda et al.'s one-layer transformer."""
