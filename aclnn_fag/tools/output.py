"""One output convention for ``info``, ``parity`` and ``bench`` (and ``parity --junit``).

* ``--json FILE`` writes the command's JSON document to FILE; ``--json -`` writes it to
  stdout. ``info --json`` with no FILE still means stdout (its old spelling).
* Whenever a machine-readable document goes to stdout, the human-readable text (tables,
  "report: FILE" lines) goes to stderr instead, so that stdout stays parseable.
* Files are written whole or not at all (a temporary file in the same directory, renamed).
* Old spellings kept: ``parity --report FILE`` = ``--json FILE`` (but ``--report -`` keeps
  its old meaning "no report"). Changed: ``parity`` no longer writes ``parity_report.json``
  to the current directory unless asked to.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile

__all__ = ["STDOUT", "add_json_argument", "to_stdout", "human_stream", "write_text", "write_json",
           "emit_report", "json_safe"]

STDOUT = "-"


def add_json_argument(p, what: str, optional_value: bool = False) -> None:
    """``--json FILE`` ('-' = stdout). ``optional_value``: a bare ``--json`` means stdout."""
    kwargs = dict(nargs="?", const=STDOUT) if optional_value else {}
    p.add_argument("--json", metavar="FILE", default=None, **kwargs,
                   help=f"write {what} as JSON to FILE ('-' = stdout; the text then goes to stderr)")


def to_stdout(*destinations) -> bool:
    return any(d == STDOUT for d in destinations)


def human_stream(*destinations):
    """Where the human-readable text goes: stderr when a document is written to stdout."""
    return sys.stderr if to_stdout(*destinations) else sys.stdout


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
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
    """Print a suite's table (stderr when the JSON goes to stdout), write ``--json``, and
    return the exit status (1 when ``--check`` and a goal was missed)."""
    stream = human_stream(args.json)
    print(text, file=stream)
    if args.json:
        write_json(report, args.json)
        if args.json != STDOUT:
            print(f"json: {args.json}", file=stream)
    return 1 if args.check and not goals_met else 0
