"""``aclnn-fag parity --backend-module pkg.mod:function``: judge any implementation
(docs/parity.md, "Judging another implementation")."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings

import numpy as np

from ..call import FagGrads

__all__ = ["load_backend", "BackendModuleError", "CALL_KEYWORDS", "as_grads"]

CALL_KEYWORDS = ("query", "query_rope", "key", "key_rope", "value", "dy", "atten_mask",
                 "softmax_max", "softmax_sum", "attention_in", "actual_seq_qlen",
                 "actual_seq_kvlen", "scale_value", "pre_tokens", "next_tokens", "sparse_mode",
                 "deterministic")


_OLD_ADAPTERS = "aclnn_fag.adapters."      # where the shipped adapters lived before tools/


class BackendModuleError(ValueError):
    """``--backend-module`` names nothing callable with the public call's keyword arguments."""


def as_grads(result) -> FagGrads:
    """The callable's result as FagGrads of numpy arrays (TypeError when it is not one)."""
    if isinstance(result, dict):
        missing = [k for k in FagGrads._fields if k not in result]
        if missing:
            raise TypeError(f"the backend module returned a dict without {missing}")
        values = tuple(result[k] for k in FagGrads._fields)
    elif all(hasattr(result, k) for k in FagGrads._fields):
        values = tuple(getattr(result, k) for k in FagGrads._fields)
    elif isinstance(result, (tuple, list)) and len(result) == 5:
        values = tuple(result)
    else:
        raise TypeError("the backend module must return dq, dq_rope, dk, dk_rope, dv (FagGrads, "
                        f"a 5-sequence, a dict or an object with those names), got "
                        f"{type(result).__name__}")
    return FagGrads(*(None if v is None else np.asarray(v) for v in values))


def load_backend(spec: str):
    """The backend function for ``pkg.mod:function`` (raises BackendModuleError)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise BackendModuleError(f"--backend-module takes 'pkg.module:function', got {spec!r}")
    mod_name, attr_path = spec.split(":")
    if mod_name.startswith(_OLD_ADAPTERS):
        new = "aclnn_fag.tools.adapters." + mod_name[len(_OLD_ADAPTERS):]
        warnings.warn(f"--backend-module {mod_name} is now {new}; the old name will go",
                      DeprecationWarning, stacklevel=2)
        mod_name = new
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:                 # SystemExit at import too: a usage error
        raise BackendModuleError(f"--backend-module {spec}: cannot import {mod_name}: "
                                 f"{type(exc).__name__}: {exc}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = module
    for part in attr_path.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise BackendModuleError(f"--backend-module {spec}: {mod_name} has no {attr_path}") from None
    if not callable(fn):
        raise BackendModuleError(f"--backend-module {spec}: {attr_path} is not callable")
    try:
        inspect.signature(fn).bind(**dict.fromkeys(CALL_KEYWORDS))
    except TypeError as exc:
        raise BackendModuleError(f"--backend-module {spec}: {attr_path} cannot take the public "
                                 f"call's keyword arguments ({', '.join(CALL_KEYWORDS)}): {exc}") from None
    except ValueError:
        pass                                     # no signature (a builtin): try it at run time
    name = getattr(fn, "backend_name", None) or f"module:{spec}"

    def run(**kwargs) -> FagGrads:
        return as_grads(fn(**kwargs))

    run.backend_name = str(name)
    run.backend_module = spec
    return run
