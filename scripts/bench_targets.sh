#!/usr/bin/env bash
# The project's performance targets: `aclnn-fag bench --suite targets`, extra arguments passed on
# (e.g. --backend npu, --repeat 5, --json bench_targets.json, --check to fail on a missed target).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" -m aclnn_fag bench --suite targets "$@"
