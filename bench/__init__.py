"""The benchmark of hier_ae against its peers (issue #10) and of its reconstruction (issue 21).

A package: run its scripts from the repository root as modules, `python -m bench.run`,
`python -m bench.recon`, `python -m bench.generation`, `python -m bench.decode_speed`,
`python -m bench.ae_peer` (the fixed-chunk autoencoder peer).
"""
