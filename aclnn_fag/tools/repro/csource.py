"""The text of ``repro.c`` and ``build.sh`` for one call (templates in aclnn_fag/tools/data/):
the binding's calls in its order, with the slots and attributes of ``aclnn_fag/spec.py``."""

from __future__ import annotations

import pathlib
import textwrap
from string import Template

import numpy as np

from ...acl.tensors import acl_dtype
from ...spec import BACKWARD_V3

__all__ = ["c_source", "build_script", "phase1_call", "template"]

OP = BACKWARD_V3


def template(name: str) -> Template:
    """A template of aclnn_fag/tools/data/ (``$name`` placeholders, ``$$`` for a dollar)."""
    return Template((pathlib.Path(__file__).resolve().parents[1] / "data" / name).read_text())


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _double(x) -> str:
    return f"{float(x).hex()} /* {float(x)!r} */"


def _tensor_rows(specs, names) -> str:
    rows = []
    for name, spec in zip(names, specs):
        if spec is None:
            rows.append(f"    {{{_c_string(name)}, 0, ACL_DT_UNDEFINED, 0, {{0}}, 0}},")
            continue
        dims = ", ".join(str(int(d)) for d in spec["shape"]) or "0"
        dtype = f"(aclDataType){acl_dtype(np.dtype(spec['dtype']))} /* {spec['dtype']} */"
        rows.append(f"    {{{_c_string(name)}, 1, {dtype}, {len(spec['shape'])}, {{{dims}}}, "
                    f"{int(spec['itemsize'])}}},")
    return "\n".join(rows)


def _attributes(attrs: dict) -> str:
    """One C constant per attribute of the spec (the layout: the ``layOut`` string)."""
    lines = []
    for p in OP.params:
        if p.role != "attr" or p.name == "input_layout":
            continue
        value = attrs[p.name]
        lines.append(f"static const double {p.name.upper()} = {_double(value)};"
                     if p.c_type == "double" else
                     f"static const int64_t {p.name.upper()} = {int(value)}LL;")
    return "\n".join(lines)


def c_source(*, case: str, version: str, inputs, int_arrays: dict, attrs: dict, outputs,
             deterministic: int, criteria: dict, k: float, floor_rel: float,
             floor_min: float) -> str:
    """The reproducer; ``inputs``/``outputs`` per slot None or {"shape", "dtype", "itemsize"}."""
    ia_decl, ia_rows = [], []
    for name in OP.int_arrays:
        vals = int_arrays.get(name)
        if vals is None:
            ia_rows.append(f"    {{{_c_string(name)}, 0, NULL, 0}},")
            continue
        ia_decl.append(f"static const int64_t IA_{name.upper()}[] = "
                       f"{{{', '.join(str(int(v)) for v in vals) or '0'}}};")
        ia_rows.append(f"    {{{_c_string(name)}, 1, IA_{name.upper()}, {len(vals)}}},")
    judge_rows = [f"    {{{_c_string(n)}, {_double(c['ref_max_abs_err'])}, {_double(c['rtol'])}, "
                  f"{_double(c['share_limit'])}}}," for n, c in criteria.items()]
    layout = attrs["input_layout"]

    def c_names(role):
        return ", ".join(p.c_name for p in OP.params if p.role == role)

    return template("repro.c.in").substitute(
        case=case, version=version, op=OP.symbol, phase1=OP.phase1, header=OP.header,
        n_in=len(OP.inputs), in_names=c_names("input"), in_rows=_tensor_rows(inputs, OP.inputs),
        n_ia=len(OP.int_arrays), ia_decl="\n".join(ia_decl), ia_rows="\n".join(ia_rows),
        n_out=len(OP.outputs), out_names=c_names("output"),
        out_rows=_tensor_rows(outputs, OP.outputs),
        n_judge=len(judge_rows), judge_rows="\n".join(judge_rows),
        attributes=_attributes(attrs), det=int(deterministic),
        layout_init="NULL" if layout is None else f"strdup({_c_string(layout)})",
        k=_double(k), floor_rel=float(floor_rel).hex(), floor_min=float(floor_min).hex(),
        phase1_call=phase1_call())


def phase1_call(op=OP) -> str:
    """The phase-1 call, its arguments in the order of ``op``'s prototype."""
    args, seen = [], {"input": 0, "int_array": 0, "output": 0}
    slot = {"input": "g_in[{}].tensor", "int_array": "intArrays[{}]", "output": "g_out[{}].tensor"}
    for p in op.params:
        if p.role in seen:
            args.append(slot[p.role].format(seen[p.role]))
            seen[p.role] += 1
        elif p.role == "attr":
            args.append("layOut" if p.name == "input_layout" else p.name.upper())
        else:
            args.append("&workspaceSize" if p.role == "workspace_size" else "&executor")
    body = textwrap.fill(", ".join(args), width=100, initial_indent=" " * 8,
                         subsequent_indent=" " * 8, break_long_words=False)
    return f"{op.phase1}(\n{body})"


def build_script(opapi_preference) -> str:
    return template("repro_build.sh.in").substitute(names=" ".join(opapi_preference),
                                                     phase1=OP.phase1)
