"""``kind = "mlp"``: one hidden layer on per-operand embeddings (Gromov; Omnigrok)."""
