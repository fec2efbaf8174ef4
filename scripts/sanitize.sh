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
        valgrind --tool=memcheck --leak-check=no --error-exitcode=99 --num-callers=30 \
        --log-file="$LOG/valgrind.%p" \
        "$PY" -m pytest -q -p no:cacheprovider "${ARGS[@]}" > "$LOG/valgrind-pytest.txt" 2>&1
    local rc=$? dt=$((SECONDS - t0))
    local errors
    errors=$(grep -h "ERROR SUMMARY" "$LOG"/valgrind.* | awk '{s += $4} END {print s + 0}')
    echo "valgrind memcheck: $(tail -1 "$LOG/valgrind-pytest.txt"); errors: $errors" \
         "(ERROR SUMMARY over $(ls "$LOG"/valgrind.* | wc -l) process(es)); ${dt}s (log: $LOG)"
    if [ "$rc" -ne 0 ] || [ "$errors" -ne 0 ]; then STATUS=1; fi
}

case "$MODE" in
    asan) run_asan ;;
    valgrind) run_valgrind ;;
    all) run_asan; run_valgrind ;;
    *) echo "usage: $0 [asan|valgrind|all] [pytest args...]"; exit 2 ;;
esac
exit $STATUS
