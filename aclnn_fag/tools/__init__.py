"""The tools built on the library: the ``aclnn-fag`` command (info, demo, parity, bench), the
parity run and its criteria, the case suites, reports (JSON, JUnit, comparison), C
reproducers, benchmarks, environment information and backend adapters. Nothing in the library
layer imports from here (docs/architecture.md)."""
