#!/usr/bin/env python3
"""Mutation testing for aclnn_fag: does the test suite fail when user-visible behaviour breaks?

The mutants are a documented table (``scripts/mutants.py``): each one names a file, an exact
snippet of it, the replacement, the package area and the behaviour a user would lose. For
every mutant this script

1. checks the snippet occurs exactly once in the current file (else the mutant is **stale**:
   the code changed under it -- it is reported, not run);
2. writes the mutated file into a scratch copy of the tree (the working tree is never
   touched; one copy is made per run and restored after each mutant);
3. for a C mutant, rebuilds the stub libraries in the copy (a mutant that does not compile
   is **invalid**, not killed);
4. runs the area's test selection there (``tests/README.md`` says which folders cover which
   area; a mutant may narrow or widen it) with ``pytest -x``, stopping at the first failure:
   a failing run **kills** the mutant, a green one lets it **survive**; a run over the
   timeout counts as killed (reported as ``timeout``).

It prints one line per mutant and the kill rate per area, and writes a JSON report.

Usage::

    nice -n 10 python3 scripts/mutate.py                      # every mutant
    python3 scripts/mutate.py --list                          # the table
    python3 scripts/mutate.py --area stub --area acl          # some areas
    python3 scripts/mutate.py --id ref-rowmax-odd             # one mutant
    python3 scripts/mutate.py --baseline                      # first check each selection is green
    python3 scripts/mutate.py --check-stale                   # only report stale mutants

Bytecode caches are disabled in the copy (PYTHONDONTWRITEBYTECODE=1) so that a restored file
is never shadowed by the mutant's .pyc. Runs are sequential (the machine is shared). The JSON
report is rewritten after every mutant, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from mutants import AREA_TESTS, AREAS, MUTANTS, Mutant  # noqa: E402

STUB_BUILD = pathlib.Path("native_stubs") / "build"


def _tree_files(root: pathlib.Path) -> list:
    """Tracked and untracked-but-not-ignored files of the tree (its current state)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def make_scratch(root: pathlib.Path, where: pathlib.Path) -> pathlib.Path:
    """Copy the tree (and its built stub libraries, if any) into ``where``."""
    dst = where / "tree"
    for rel in _tree_files(root):
        src = root / rel
        if not src.is_file():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst


def build_stubs(tree: pathlib.Path, timeout: float) -> tuple:
    proc = subprocess.run([sys.executable, str(tree / "native_stubs" / "build.py")], cwd=tree,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode == 0, proc.stdout + proc.stderr


def _env(tree: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # the hypothesis/benchmark pytest plugins cost ~2 s of startup per run and are not needed
    # (hypothesis' @given works without its plugin)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    for var in ("ACLNN_FAG_BACKEND", "ACLNN_FAG_LIB_DIR", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME",
                "ACLNN_FAG_BLOCK_Q", "ACLNN_FAG_BLOCK_K", "ACLNN_FAG_BLOCK_MIN"):
        env.pop(var, None)
    return env


def run_tests(tree: pathlib.Path, selection: list, timeout: float) -> tuple:
    """(status, seconds, tail of the output): status "pass", "fail" or "timeout"."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "--no-header", "-W", "ignore::pytest.PytestUnraisableExceptionWarning"] + selection
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    seconds = time.monotonic() - t0
    text = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0:
        return "pass", seconds, text[-1] if text else ""
    if proc.returncode == 5:
        return "error", seconds, "no tests collected: " + " ".join(selection)
    failed = [ln for ln in text if ln.startswith(("FAILED", "ERROR"))]
    return "fail", seconds, (failed[0] if failed else (text[-1] if text else ""))


def selection_of(m: Mutant) -> list:
    return list(m.tests) if m.tests else list(AREA_TESTS[m.area])


def check(m: Mutant, root: pathlib.Path):
    """None when the snippet occurs exactly once, else why the mutant is stale."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    n = path.read_text(encoding="utf-8").count(m.original)
    if n != 1:
        return f"snippet found {n} times in {m.file}"
    return None


def run_mutant(m: Mutant, tree: pathlib.Path, root: pathlib.Path, pristine_libs: dict,
               timeout: float) -> dict:
    result = {"id": m.id, "area": m.area, "file": m.file, "breaks": m.breaks,
              "tests": selection_of(m)}
    stale = check(m, tree)          # against the copy: the tree may change during the run
    if stale:
        result.update(status="stale", detail=stale)
        return result
    target = tree / m.file
    original_text = target.read_text(encoding="utf-8")
    stat = target.stat()
    is_c = m.file.endswith((".c", ".h"))
    try:
        target.write_text(original_text.replace(m.original, m.replacement, 1), encoding="utf-8")
        if is_c:
            ok, log = build_stubs(tree, timeout)
            if not ok:                 # once more: a transient failure (disk, OOM) is not the mutant's
                ok, log = build_stubs(tree, timeout)
            if not ok:
                result.update(status="invalid", detail=" | ".join(log.strip().splitlines()[-4:]))
                return result
        status, seconds, detail = run_tests(tree, result["tests"], timeout)
        result.update(status={"fail": "killed", "pass": "survived"}.get(status, status),
                      seconds=round(seconds, 2), detail=detail)
        return result
    finally:
        target.write_text(original_text, encoding="utf-8")
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        if is_c:                                   # put the unmutated libraries back
            for name, (src, ns) in pristine_libs.items():
                dst = tree / STUB_BUILD / name
                shutil.copy2(src, dst)
                os.utime(dst, ns=ns)


def summarise(results: list) -> dict:
    per = {}
    for r in results:
        a = per.setdefault(r["area"], {"mutants": 0, "killed": 0, "survived": 0, "stale": 0,
                                       "invalid": 0, "error": 0})
        a["mutants"] += 1
        key = "killed" if r["status"] in ("killed", "timeout") else r["status"]
        a[key] = a.get(key, 0) + 1
    for a in per.values():
        judged = a["killed"] + a["survived"]
        a["kill_rate"] = round(a["killed"] / judged, 4) if judged else None
    return per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--area", action="append", choices=AREAS, help="only these areas")
    ap.add_argument("--id", action="append", help="only these mutants (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the mutant table and exit")
    ap.add_argument("--check-stale", action="store_true", help="only report stale mutants")
    ap.add_argument("--baseline", action="store_true",
                    help="first run every selection unmutated; abort if one is red")
    ap.add_argument("--changed-since", metavar="REV",
                    help="only mutants whose file or test selection changed since git REV "
                         "(re-run after a merge: stale ones are reported as stale)")
    ap.add_argument("--base-report", metavar="FILE",
                    help="combine with an earlier report: mutants not run now keep their result "
                         "from FILE (if their snippet still matches); the summary covers both")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant run")
    ap.add_argument("--report", default="mutation_report.json", help="JSON report path")
    ap.add_argument("--tree", default=str(ROOT), help="the tree to copy (default: this repo)")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.tree).resolve()

    chosen = [m for m in MUTANTS if (not args.area or m.area in args.area)
              and (not args.id or m.id in args.id)]
    if args.changed_since:
        diff = subprocess.run(["git", "diff", "--name-only", args.changed_since, "--"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.split()
        changed = set(diff)

        def touched(m):
            paths = [m.file] + selection_of(m)
            return any(c == p or c.startswith(p.rstrip("/") + "/") for p in paths for c in changed)
        chosen = [m for m in chosen if touched(m)]
    if args.list:
        for m in chosen:
            print(f"{m.id:<28s} {m.area:<10s} {m.file}\n    breaks: {m.breaks}\n"
                  f"    tests:  {' '.join(selection_of(m))}")
        print(f"{len(chosen)} mutants")
        return 0
    if args.check_stale:
        stale = [(m.id, check(m, root)) for m in chosen if check(m, root)]
        for mid, why in stale:
            print(f"STALE {mid}: {why}")
        print(f"{len(stale)} stale of {len(chosen)}")
        return 1 if stale else 0

    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="aclnn_fag_mutate_") as tmp:
        tree = make_scratch(root, pathlib.Path(tmp))
        ok, log = build_stubs(tree, args.timeout)
        if not ok:
            print("the unmutated stubs do not build:\n" + log, file=sys.stderr)
            return 2
        pristine_dir = pathlib.Path(tmp) / "pristine_libs"
        pristine_dir.mkdir()
        pristine_libs = {}
        for lib in sorted((tree / STUB_BUILD).glob("*.so")):
            keep = pristine_dir / lib.name
            shutil.copy2(lib, keep)
            st = lib.stat()
            pristine_libs[lib.name] = (keep, (st.st_atime_ns, st.st_mtime_ns))
        if args.baseline:
            for sel in sorted({tuple(selection_of(m)) for m in chosen}):
                status, seconds, detail = run_tests(tree, list(sel), args.timeout)
                print(f"baseline {status:<7s} {seconds:6.1f}s  {' '.join(sel)}  {detail}", flush=True)
                if status != "pass":
                    print("a test selection is red without any mutant: fix that first",
                          file=sys.stderr)
                    return 2
        results = []
        for i, m in enumerate(chosen, 1):
            r = run_mutant(m, tree, root, pristine_libs, args.timeout)
            results.append(r)
            print(f"[{i:>3}/{len(chosen)}] {r['status']:<8s} {r.get('seconds', 0):6.1f}s "
                  f"{m.area:<10s} {m.id:<28s} {r.get('detail', '')[:110]}", flush=True)
            write_report(args.report, started, root, results, i == len(chosen))
    if args.base_report:
        earlier = {r["id"]: r for r in json.load(open(args.base_report, encoding="utf-8"))["results"]}
        now = {r["id"]: r for r in results}
        combined = []
        for m in MUTANTS:
            if m.id in now:
                combined.append(now[m.id])
            elif m.id in earlier:
                old = dict(earlier[m.id])
                stale = check(m, root)
                if stale:
                    old.update(status="stale", detail=stale)
                old["from"] = args.base_report
                combined.append(old)
        results = combined
        print(f"\ncombined with {args.base_report}: {len(now)} run now, "
              f"{len(results) - len(now)} taken from the earlier report")
    per = summarise(results)
    print("\narea        mutants  killed  survived  stale  invalid  kill rate")
    for area in AREAS:
        if area in per:
            a = per[area]
            rate = "-" if a["kill_rate"] is None else f"{100 * a['kill_rate']:.1f}%"
            print(f"{area:<11s} {a['mutants']:>7d} {a['killed']:>7d} {a['survived']:>9d} "
                  f"{a['stale']:>6d} {a['invalid']:>8d}  {rate:>9s}")
    killed = sum(a["killed"] for a in per.values())
    judged = killed + sum(a["survived"] for a in per.values())
    if judged:
        print(f"{'total':<11s} {len(results):>7d} {killed:>7d} {judged - killed:>9d}"
              f"{'':>16s}  {100 * killed / judged:8.1f}%")
    survivors = [r for r in results if r["status"] == "survived"]
    for r in survivors:
        print(f"SURVIVED {r['id']}: {r['breaks']}")
    write_report(args.report, started, root, results, True)
    return 0


def write_report(path, started, root, results, complete: bool) -> None:
    if not path or path == "-":
        return
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"started": started.isoformat(timespec="seconds"),
                   "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   "tree": str(root), "complete": complete,
                   "per_area": summarise(results), "results": results}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
