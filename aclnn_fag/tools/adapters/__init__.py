"""Adapters that put other implementations behind the public call's signature, for
``aclnn-fag parity --backend-module``; each imports its framework when first called."""
