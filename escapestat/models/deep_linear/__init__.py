"""Deep linear nets f(x) = W_L···W_1 x trapped below a teacher's mode (the paper's model)."""
