"""The tools built on the library: the ``aclnn-fag`` command, parity, reports, reproducers,
benchmarks, environment information and adapters (docs/architecture.md)."""
