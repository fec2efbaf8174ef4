#!/usr/bin/env python3
"""Build the stand-in CANN libraries (libascendcl.so, libnnopbase.so, libopapi.so).

Usage::

    python native_stubs/build.py [--out DIR] [--force]

or from Python::

    from build import build      # with native_stubs/ on sys.path
    lib_dir = build()            # -> pathlib.Path of the directory holding the .so files

Only the standard library is used.  The C compiler is ``$CC`` if set, else
``cc``, else ``gcc``.  Outputs go to ``native_stubs/build/`` unless ``out_dir``
is given.  The libraries are rebuilt only when a source (or this script) is
newer than the oldest output, or when ``force`` is true.

Variants: ``$NATIVE_STUBS_VARIANT`` (or ``--variant``) ``asan`` builds with
AddressSanitizer + UndefinedBehaviorSanitizer (``-fsanitize=address,undefined``, UB
fatal) into ``native_stubs/build-asan/``; ``debug`` builds ``-O0 -g`` (for valgrind)
into ``native_stubs/build-debug/``. Processes loading the asan variant need the ASan
runtime preloaded (``scripts/sanitize.sh`` does it). Every caller of ``build()`` — the
tests included — picks the variant up from the environment.

Concurrent builds are safe: the build runs under an exclusive ``fcntl`` lock
on ``<out_dir>/.build.lock``, compiles into a private temporary directory
inside ``out_dir`` and moves each finished library into place with
``os.replace`` (atomic; a process that already mapped the old file keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE / "src"
DEFAULT_OUT = HERE / "build"

LIBS = ("libascendcl.so", "libnnopbase.so", "libopapi.so")
OPAPI_SOURCES = ("opapi_stub.c", "trace_stub.c", "opapi_fwd_stub.c", "fwd_kernel.c")

CFLAGS = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    "-pthread",
]

VARIANTS = {
    "": [],
    "asan": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"],
    "debug": ["-O0", "-g"],
}
ENV_VARIANT = "NATIVE_STUBS_VARIANT"

__all__ = ["build", "LIBS", "DEFAULT_OUT", "VARIANTS", "ENV_VARIANT"]


def _variant(variant=None) -> str:
    v = (os.environ.get(ENV_VARIANT, "") if variant is None else variant).strip()
    if v not in VARIANTS:
        raise RuntimeError(f"unknown stub build variant {v!r} (known: {sorted(k for k in VARIANTS if k)})")
    return v


def _compiler() -> list:
    cc = os.environ.get("CC", "").strip()
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return [path]
    raise RuntimeError("no C compiler found: set $CC or install cc/gcc")


def _sources() -> list:
    files = sorted(SRC.glob("*.c")) + sorted(SRC.glob("*.h"))
    return files + [pathlib.Path(__file__).resolve()]


def _up_to_date(out: pathlib.Path) -> bool:
    try:
        oldest_output = min((out / name).stat().st_mtime for name in LIBS)
    except FileNotFoundError:
        return False
    newest_source = max(p.stat().st_mtime for p in _sources())
    return newest_source <= oldest_output


@contextlib.contextmanager
def _locked(out: pathlib.Path):
    lock_path = out / ".build.lock"
    with open(lock_path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: best effort, the temp dir + rename still protects readers
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run(cmd: list) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError("native stub build failed:\n  " + " ".join(shlex.quote(c) for c in cmd)
                           + "\n" + proc.stdout)
    if proc.stdout.strip():  # warnings: show them, the sources are meant to be warning-free
        sys.stderr.write(proc.stdout)


def _compile_all(tmp: pathlib.Path, variant: str = "") -> None:
    cc = _compiler()
    flags = CFLAGS + VARIANTS[variant]        # later flags win: -O1/-O0 over -O2
    inc = ["-I", str(SRC)]
    # --no-as-needed: keep the NEEDED entries even where no symbol is used, so
    # that loading libopapi.so alone pulls in the whole stack, as in CANN.
    link_common = ["-shared", "-Wl,--no-undefined", "-Wl,--no-as-needed", "-Wl,-rpath,$ORIGIN",
                   "-L", str(tmp)]
    _run(cc + flags + inc + [str(SRC / "ascendcl_stub.c"), str(SRC / "version_stub.c"), "-o", str(tmp / "libascendcl.so")]
         + link_common + ["-Wl,-soname,libascendcl.so", "-lpthread", "-lm"])
    _run(cc + flags + inc + [str(SRC / "nnopbase_stub.c"), "-o", str(tmp / "libnnopbase.so")]
         + link_common + ["-Wl,-soname,libnnopbase.so", "-lascendcl", "-lpthread"])
    # libopapi.so: the backward (opapi_stub.c, trace_stub.c) and the forward
    # (opapi_fwd_stub.c, its kernel fwd_kernel.c)
    _run(cc + flags + inc + [str(SRC / name) for name in OPAPI_SOURCES]
         + ["-o", str(tmp / "libopapi.so")]
         + link_common + ["-Wl,-soname,libopapi.so", "-lnnopbase", "-lascendcl", "-lpthread", "-lm"])


def build(out_dir=None, force: bool = False, variant=None) -> pathlib.Path:
    """Compile the stub libraries if needed and return the directory holding them.
    ``variant`` None means ``$NATIVE_STUBS_VARIANT`` ("" = the normal build)."""
    variant = _variant(variant)
    if out_dir is not None:
        out = pathlib.Path(out_dir).resolve()
    else:
        out = DEFAULT_OUT if not variant else HERE / f"build-{variant}"
    if not force and _up_to_date(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if not force and _up_to_date(out):  # another process built it while we waited
            return out
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=out))
        try:
            _compile_all(tmp, variant)
            for name in LIBS:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the stand-in CANN libraries for CI.")
    parser.add_argument("--out", default=None, help="output directory (default: native_stubs/build)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                        help="asan or debug (default: $NATIVE_STUBS_VARIANT, else the normal build)")
    args = parser.parse_args(argv)
    try:
        out = build(args.out, force=args.force, variant=args.variant)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
