"""Trusted baseline kernels the judge and the model are compared against (never evolved)."""
