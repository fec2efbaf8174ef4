"""The public surface, pinned: the names ``aclnn_fag``, ``aclnn_fag.acl`` and ``aclnn_fag.torch``
export, the keyword parameters of the public calls, and every option of every CLI command.

The lists are the surface of the release before the package was reorganised into layers
(docs/architecture.md); a name may be added, none may disappear (a rename keeps the old
name as an alias). A failure here means a user's import, keyword or command line breaks.
"""

from __future__ import annotations

import argparse
import inspect
import os

import pytest

import aclnn_fag
import aclnn_fag.acl
from aclnn_fag import errors

TOP = ["AclRuntimeError", "AclnnError", "BACKENDS", "BackendUnavailableError", "FagForward",
       "FagGrads", "FullyMaskedRowWarning", "IgnoredArgumentWarning", "LibraryNotFoundError",
       "NpuFallbackWarning", "ParamInvalidError", "ParamNullptrError", "SequenceEndWarning",
       "SoftmaxStatsMismatchWarning", "__version__", "blas_info", "error_class_for",
       "flash_attention_forward", "flash_attention_unpadding_score_grad_v3", "last_backend",
       "masks", "reference_threads", "resolve_backend", "seqlens", "set_reference_threads",
       "softmax_layout"]
ACL = ["AUTO", "AclIntArray", "AclTensor", "Availability", "DeviceArray", "DeviceBuffer",
       "FagExecutor", "FagPlan", "ForkedProcessError", "RETRY_BACKOFF_MAX", "RETRY_BACKOFF_MIN",
       "STAND_IN_LABEL", "availability", "call_pool", "call_raw", "call_raw_forward",
       "clear_executor_cache", "constants", "determinism", "exec_cache", "forward_available",
       "get_determinism", "info", "loader", "ownership", "prototypes", "release_call_memory",
       "release_constants", "release_thread_resources", "reset", "reset_stats", "run_backward",
       "run_forward", "runtime", "shutdown", "stand_in", "stats", "upload_arrays"]
TORCH = ["FlashAttentionVarlenRope", "varlen_attention"]
HELPERS = {"masks": ["compressed_causal_mask", "band_mask", "causal_mask"],
           "seqlens": ["lengths_to_cumulative", "cumulative_to_lengths", "max_lengths"],
           "softmax_layout": ["device_stats_from_token_major", "token_major_from_device_stats"]}
ERRORS = ["ACLNN_STATUS", "ACL_ERRORS", "AclBadAllocError", "AclInvalidParamError",
          "AclRepeatFinalizeError", "AclRepeatInitializeError", "AclRtAicoreExceptionError",
          "AclRtContextNullError", "AclRtDrvInternalError", "AclRtInvalidDeviceIdError",
          "AclRtMemoryAllocationError", "AclRtParamInvalidError", "AclRtVectorCoreExceptionError",
          "AclRuntimeError", "AclUninitializeError", "AclnnError", "AttrLenNotEnoughError",
          "AttrNumOutOfBoundError", "BackendUnavailableError", "CreateExecutorError",
          "DeterminismWarning", "FindKernelError", "InferShapeError", "InnerError",
          "InnerNullptrError", "InputLenNotEnoughError", "InputNumOutOfBoundError",
          "InvalidImplModeError", "JsonDtypeInvalidError", "JsonFormatInvalidError",
          "JsonValueNotFoundError", "KeyConflictError", "LibraryNotFoundError",
          "LoadJsonFailedError", "NotTransExecutorError", "OpFileInvalidError",
          "OppKernelPkgNotFoundError", "OppPathNotFoundError", "ParamInvalidError",
          "ParamNullptrError", "ResourceReleaseWarning", "RuntimeErrorStatus",
          "StaticBlockDimInvalidError", "StaticWorkspaceInvalidError", "TilingError",
          "WrongAttrInfoSizeError"]
COMMON = ["query", "query_rope", "key", "key_rope", "value"]
ATTRS = ["scale_value", "keep_prob", "pre_tokens", "next_tokens", "head_num", "input_layout",
         "inner_precise", "sparse_mode", "pse_type"]
SIGNATURES = {
    "flash_attention_unpadding_score_grad_v3": COMMON + [
        "dy", "atten_mask", "softmax_max", "softmax_sum", "attention_in", "actual_seq_qlen",
        "actual_seq_kvlen"] + ATTRS + ["pse_shift", "drop_mask", "padding_mask", "softmax_in",
        "prefix", "q_start_idx", "kv_start_idx", "backend", "precision", "deterministic",
        "check_data", "stream"],
    "flash_attention_forward": COMMON + ["atten_mask", "actual_seq_qlen", "actual_seq_kvlen"]
        + ATTRS + ["pse_shift", "drop_mask", "padding_mask", "prefix", "q_start_idx",
        "kv_start_idx", "backend", "precision", "deterministic", "check_data", "stream"],
}
RAW = {
    "call_raw": COMMON + ["dy", "pse_shift", "drop_mask", "padding_mask", "atten_mask",
        "softmax_max", "softmax_sum", "softmax_in", "attention_in", "prefix", "actual_seq_qlen",
        "actual_seq_kvlen", "q_start_idx", "kv_start_idx"] + ATTRS + ["dq", "dq_rope", "dk",
        "dk_rope", "dv", "dpse", "workspace_size_out", "executor_out", "deterministic",
        "device_id", "timings"],
    "call_raw_forward": COMMON + ["pse_shift", "drop_mask", "padding_mask", "atten_mask",
        "prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx"] + ATTRS
        + ["softmax_max", "softmax_sum", "softmax_out", "attention_out", "workspace_size_out",
        "executor_out", "deterministic", "device_id", "timings"],
}
VARLEN = ["q", "q_rope", "k", "k_rope", "v", "actual_seq_qlen", "actual_seq_kvlen", "scale_value",
          "sparse_mode", "atten_mask", "pre_tokens", "next_tokens", "backend", "check_data",
          "stream"]
PLAN = ["close", "closed", "from_call", "grads", "inputs", "outputs", "run", "workspace_size"]
DEVICE_ARRAY = ["close", "closed", "copy_from_numpy", "device_id", "empty", "free", "from_numpy",
                "from_pointer", "is_contiguous", "itemsize", "max_index_from_offset", "nbytes",
                "ndim", "numpy", "size", "storage_elems", "view", "zeros"]
CLI = {
    None: ["--help", "--version", "-h"],
    "info": ["--help", "--json", "-h"],
    "demo": ["--backend", "--help", "--seed", "-h"],
    "parity": ["--all", "--backend", "--backend-module", "--case", "--compare", "--factor",
               "--help", "--json", "--junit", "--k", "--list", "--no-shrink", "--op",
               "--precision", "--quick", "--quiet", "--report", "--repro", "--suite", "--tags",
               "--verbose", "-h", "-q", "-v"],
    "bench": ["--backend", "--check", "--help", "--json", "--precision", "--quiet", "--repeat",
              "--suite", "-h", "-q"],
}


def _missing(names, module) -> list:
    return [n for n in names if not hasattr(module, n)]


def test_package_exports_every_name():
    assert _missing(TOP, aclnn_fag) == [] and set(TOP) <= set(aclnn_fag.__all__)
    for module, names in HELPERS.items():
        assert _missing(names, getattr(aclnn_fag, module)) == [], module
    assert _missing(ERRORS, errors) == []


def test_acl_exports_every_name():
    assert _missing(ACL, aclnn_fag.acl) == [] and set(ACL) <= set(aclnn_fag.acl.__all__)
    assert _missing(PLAN, aclnn_fag.acl.FagPlan) == []
    assert _missing(DEVICE_ARRAY, aclnn_fag.acl.DeviceArray) == []


def test_torch_exports_every_name():
    if not os.environ.get("CI"):          # CI installs torch: there a missing torch fails
        pytest.importorskip("torch")
    import aclnn_fag.torch as torch_api
    assert _missing(TORCH, torch_api) == [] and set(TORCH) <= set(torch_api.__all__)
    assert _keywords(torch_api.varlen_attention) >= set(VARLEN)


def _keywords(fn) -> set:
    return set(inspect.signature(fn).parameters)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_calls_keep_every_keyword(name):
    assert set(SIGNATURES[name]) - _keywords(getattr(aclnn_fag, name)) == set()


@pytest.mark.parametrize("name", sorted(RAW))
def test_raw_calls_keep_every_keyword(name):
    assert set(RAW[name]) - _keywords(getattr(aclnn_fag.acl, name)) == set()


def _options(parser) -> set:
    return {s for a in parser._actions for s in a.option_strings}


def test_cli_keeps_every_option():
    from aclnn_fag.tools.cli import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, options in CLI.items():
        have = _options(parser if command is None else subs[command])
        assert set(options) - have == set(), command
