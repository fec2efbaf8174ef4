"""Adapters that put other implementations behind the public call's signature, for
``aclnn-fag parity --backend-module`` (see docs/parity.md). Importing this package imports
nothing heavy; each adapter imports its framework when first called."""
