#!/usr/bin/env bash
# Run the native-stub and binding test suites (tests/native, tests/acl) with the stub
# libraries under AddressSanitizer + UndefinedBehaviorSanitizer, and under valgrind memcheck;
# report the error counts (0 expected) and the time each run took. Not part of CI (slow).
#
#   scripts/sanitize.sh [asan|valgrind|all] [pytest args...]    (default: all, both suites)
#
# asan:     stubs built with -fsanitize=address,undefined (UB fatal) into native_stubs/build-asan
#           (NATIVE_STUBS_VARIANT=asan, which the tests' build step honours); the ASan runtime
#           is LD_PRELOADed into Python (it must come first); leak detection is off (the
#           interpreter's own allocations at exit; the stubs' live-object counters, checked by
#           the tests, cover leaks of native handles).
# valgrind: stubs built -O0 -g into native_stubs/build-debug; PYTHONMALLOC=malloc so memcheck
#           sees every allocation; --leak-check=no for the same reason as above.
# Exit status: 0 when both runs report 0 errors and the tests pass.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-all}
[ $# -gt 0 ] && shift
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(tests/native tests/acl)
PY=${PYTHON:-python3}
# the interpreter binary itself (a wrapper script such as a pyenv shim would exec it, and
# valgrind does not follow exec: it would check the wrapper's shell, not Python)
PY=$("$PY" -c 'import sys; print(sys.executable)')
LOG=$(mktemp -d /tmp/aclnn_fag_sanitize.XXXXXX)
STATUS=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

run_asan() {
    local libasan
    libasan=$(${CC:-gcc} -print-file-name=libasan.so)
    if [ ! -e "$libasan" ]; then
        echo "asan: libasan.so not found (apt-get install libasan8 / gcc)"; STATUS=1; return
    fi
    NATIVE_STUBS_VARIANT=asan "$PY" native_stubs/build.py >/dev/null || { STATUS=1; return; }
    local t0=$SECONDS
    NATIVE_STUBS_VARIANT=asan LD_PRELOAD="$libasan" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:log_path=$LOG/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$LOG/ubsan" \
        "$PY" -m pytest -q -p no:cacheprovider "${ARGS[@]}" > "$LOG/asan-pytest.txt" 2>&1
    local rc=$? dt=$((SECONDS - t0))
    local asan_errors ubsan_errors
    asan_errors=$(cat "$LOG"/asan.* 2>/dev/null | grep -c "ERROR: AddressSanitizer")
    ubsan_errors=$(cat "$LOG"/ubsan.* "$LOG"/asan.* 2>/dev/null | grep -c "runtime error:")
    echo "asan+ubsan: $(tail -1 "$LOG/asan-pytest.txt"); AddressSanitizer errors: $asan_errors;" \
         "UndefinedBehaviorSanitizer errors: $ubsan_errors; ${dt}s (log: $LOG)"
    if [ "$rc" -ne 0 ] || [ "$asan_errors" -ne 0 ] || [ "$ubsan_errors" -ne 0 ]; then STATUS=1; fi
}

run_valgrind() {
    if ! command -v valgrind >/dev/null; then
        echo "valgrind: not installed (apt-get install valgrind)"; STATUS=1; return
    fi
    NATIVE_STUBS_VARIANT=debug "$PY" native_stubs/build.py >/dev/null || { STATUS=1; return; }
    local t0=$SECONDS
    NATIVE_STUBS_VARIANT=debug PYTHONMALLOC=malloc \
        valgrind --tool=memcheck --leak-check=no --num-callers=30 \
        --log-file="$LOG/valgrind.%p" \
        "$PY" -m pytest -q -p no:cacheprovider "${ARGS[@]}" > "$LOG/valgrind-pytest.txt" 2>&1
    local rc=$? dt=$((SECONDS - t0))
    # memcheck's error records, split by where they are: a frame in the stub libraries
    # (or their sources) counts against us; the rest are the interpreter's own known
    # false positives (CPython is not built --with-valgrind), listed but not counted
    local summary
    summary=$("$PY" - "$LOG" <<'PYEOF'
import glob, re, sys
ours = other = 0
kinds = {}
for path in glob.glob(sys.argv[1] + "/valgrind.*"):
    text = open(path, errors="replace").read()
    for block in re.split(r"\n==\d+== \n", text):
        lines = [l for l in block.splitlines() if re.match(r"==\d+== ", l)]
        if not lines or not re.search(r"(at|by) 0x", block):
            continue
        head = lines[0].split("== ", 1)[1]
        if any(k in block for k in ("_stub.c", "libascendcl.so", "libnnopbase.so", "libopapi.so")):
            ours += 1
            kinds[head] = kinds.get(head, 0) + 1
        else:
            other += 1
print(f"{ours} {other} " + "; ".join(f"{k} x{v}" for k, v in kinds.items()))
PYEOF
)
    local ours other
    read -r ours other _ <<< "$summary"
    echo "valgrind memcheck: $(tail -1 "$LOG/valgrind-pytest.txt"); errors in the stub libraries:" \
         "$ours; other error records (the interpreter's own, not counted): $other;" \
         "$(ls "$LOG"/valgrind.* | wc -l) process(es); ${dt}s (log: $LOG)"
    if [ "$rc" -ne 0 ] || [ "$ours" -ne 0 ]; then STATUS=1; fi
}

case "$MODE" in
    asan) run_asan ;;
    valgrind) run_valgrind ;;
    all) run_asan; run_valgrind ;;
    *) echo "usage: $0 [asan|valgrind|all] [pytest args...]"; exit 2 ;;
esac
exit $STATUS
