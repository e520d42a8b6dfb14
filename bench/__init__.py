"""Benchmarks and peers of hier_ae (run as modules: `python -m bench.ae_peer ...`)."""
