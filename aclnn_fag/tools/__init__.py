"""The package's tools: the ``aclnn-fag`` command line and what only it uses (parity runs and
their reports, benchmarks, environment and version reports, reproducers, adapters)."""
