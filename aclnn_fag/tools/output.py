"""One output convention for every command (docs/parity.md, "Output options"): ``--json
FILE`` ('-' = stdout, the text then goes to stderr), files written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile

__all__ = ["STDOUT", "add_json_argument", "human_stream", "write_text", "write_json",
           "emit_report", "json_safe", "figure", "progress_writer", "usage_error"]

STDOUT = "-"


def add_json_argument(p, what: str, optional_value: bool = False) -> None:
    """``--json FILE`` ('-' = stdout). ``optional_value``: a bare ``--json`` means stdout."""
    kwargs = dict(nargs="?", const=STDOUT) if optional_value else {}
    p.add_argument("--json", metavar="FILE", default=None, **kwargs,
                   help=f"write {what} as JSON to FILE ('-' = stdout; the text then goes to stderr)")


def human_stream(*destinations):
    """Where the human-readable text goes: stderr when a document is written to stdout."""
    return sys.stderr if STDOUT in destinations else sys.stdout


def usage_error(prog: str, message: str) -> int:
    """Print ``prog: message`` on stderr; the exit status of a usage error (2)."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def progress_writer(stream):
    """A function writing one progress line to ``stream`` (nothing when it is None)."""
    def say(msg: str) -> None:
        if stream:
            stream.write(msg + "\n")
            stream.flush()
    return say


def figure(x, spec: str = ".2e") -> str:
    """A report's figure for a table: "-" for None, non-finite ones and text as they are."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return str(float(x)) if not math.isfinite(x) else format(x, spec)


def json_safe(value):
    """Strict-JSON data: non-finite floats become strings, tuples lists, unknown objects str."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_text(text: str, dest) -> None:
    """Write ``text`` to ``dest`` ('-' = stdout) atomically."""
    if dest == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# A JSON array of numbers (or nulls) that the indentation spread over lines. JSON strings
# hold no raw newline, so a match is never inside a string.
_NUMBER_ARRAY = re.compile(r'\[\n(?:[ ]*(?:-?[0-9][0-9eE.+\-]*|null|"-?inf"|"nan"),?\n)+[ ]*\]')


def _one_line(match) -> str:
    return "[" + ", ".join(p.strip() for p in match.group(0)[1:-1].split(",")) + "]"


def write_json(data, dest) -> None:
    """Indented JSON; arrays of numbers stay on one line (error summaries, shapes)."""
    text = json.dumps(json_safe(data), indent=1, allow_nan=False)
    write_text(_NUMBER_ARRAY.sub(_one_line, text) + "\n", dest)


def emit_report(args, text: str, report: dict, goals_met: bool) -> int:
    """Print the table, write ``--json``; 1 when ``--check`` and a goal was missed, else 0."""
    stream = human_stream(args.json)
    print(text, file=stream)
    if args.json:
        write_json(report, args.json)
        if args.json != STDOUT:
            print(f"json: {args.json}", file=stream)
    return 1 if args.check and not goals_met else 0
