"""Progress of long NumPy-backend calls (aclnn_fag.progress) and ``bench --suite torch``."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import aclnn_fag as af  # noqa: E402
from aclnn_fag import progress  # noqa: E402
from aclnn_fag.tools import bench_torch  # noqa: E402


def call_inputs():
    rng = np.random.default_rng(0)
    bf16 = af.api.BF16
    q, qr, k, kr, v = (rng.standard_normal((40, 2, d)).astype(bf16) for d in (16, 8, 16, 8, 16))
    kw = dict(atten_mask=af.masks.compressed_causal_mask(), actual_seq_qlen=[20, 40],
              actual_seq_kvlen=[20, 40], scale_value=0.25, sparse_mode=3, backend="numpy")
    return (q, qr, k, kr, v), kw


@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_long_calls_report_blocks_rate_and_eta(monkeypatch, capsys, tqdm_installed):
    """A call estimated above LONG_CALL_S reports progress over its query tiles on stderr
    (with tqdm, or the plain lines without it); the same call below the limit is silent."""
    xs, kw = call_inputs()
    monkeypatch.setenv("ACLNN_FAG_BLOCK_Q", "8")           # 3 query tiles per (batch, head)
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, "tqdm", None)     # "import tqdm" fails
    monkeypatch.setattr(progress, "LONG_CALL_S", 0.0)
    fwd = af.flash_attention_forward(*xs, progress=True, **kw)
    err = capsys.readouterr().err
    assert "aclnn_fag forward (numpy)" in err
    assert "12/12" in err                   # 2 batches x 3 query tiles x 2 KV heads
    if not tqdm_installed:
        assert "block/s" in err and "ETA" in err
    af.flash_attention_unpadding_score_grad_v3(
        *xs, fwd.attention_out, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
        attention_in=fwd.attention_out, progress=True, **kw)
    assert "aclnn_fag backward (numpy)" in capsys.readouterr().err
    monkeypatch.setattr(progress, "LONG_CALL_S", 1e9)       # short: silent
    af.flash_attention_forward(*xs, progress=True, **kw)
    assert capsys.readouterr().err == ""


def test_progress_switches(monkeypatch, capsys):
    xs, kw = call_inputs()
    from aclnn_fag.tools.cli import main
    monkeypatch.setattr(progress, "LONG_CALL_S", 0.0)
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert main(["demo", "--backend", "numpy", "-q"]) == 0  # the CLI turns progress on ...
    assert "aclnn_fag backward (numpy)" in capsys.readouterr().err
    assert progress._enabled_by_cli is False                # ... for its own run only
    monkeypatch.setattr(progress, "LONG_CALL_S", 0.0)
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    af.flash_attention_forward(*xs, **kw)                  # off by default in the library
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.ENV_VAR, "1")
    af.flash_attention_forward(*xs, **kw)
    assert "aclnn_fag forward" in capsys.readouterr().err
    af.flash_attention_forward(*xs, progress=False, **kw)  # the argument wins
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="ACLNN_FAG_PROGRESS"):
        af.flash_attention_forward(*xs, **kw)
    monkeypatch.delenv(progress.ENV_VAR)
    with pytest.raises(TypeError, match="parameter 'progress'"):
        af.flash_attention_forward(*xs, progress="yes", **kw)


def test_plain_bar_writes_rate_and_eta():
    stream = io.StringIO()
    bar = progress._PlainBar(4, "cases", "case", stream)
    for _ in range(4):
        bar.update(1)
    assert stream.getvalue().splitlines()[-1].startswith("cases: 4/4 cases, ")
    assert "case/s, ETA 0 s" in stream.getvalue()


def test_torch_bench_rows_and_ratios():
    cases = (bench_torch.TorchCase("tiny ragged causal", (6, 0, 5), True, 1.5),
             bench_torch.TorchCase("tiny full", (7,), False, 1.0))
    report = bench_torch.run_torch_bench(repeat=1, threads=1, cases=cases, heads=1,
                                         progress=False)
    assert [r["case"] for r in report["rows"]] == ["tiny ragged causal", "tiny full"]
    for r in report["rows"]:
        t = r["median_s"]
        assert set(t) == {"torch", "plain", "sdpa", "ref64"} and min(t.values()) > 0
        assert r["ratios"]["torch/plain"] == pytest.approx(t["torch"] / t["plain"])
        assert r["ratios"]["plain/sdpa"] == pytest.approx(t["plain"] / t["sdpa"])
    text = bench_torch.format_torch_bench(report)
    assert "tiny ragged causal" in text and "torch/sdpa" in text
    assert torch.get_num_threads() >= 1


def test_bench_suite_torch_command(monkeypatch, tmp_path, capsys):
    """``aclnn-fag bench --suite torch`` (cases shrunk): the table, the JSON report, and
    --check's exit status following the goals."""
    import json
    from aclnn_fag.tools.cli import main
    monkeypatch.setattr(bench_torch, "CASES",
                        (bench_torch.TorchCase("tiny causal", (9, 7), True, 1e9),))
    monkeypatch.setattr(bench_torch, "WRAPPER_GOAL", 1e9)   # tiny shapes: overhead only
    out = tmp_path / "bench.json"
    assert main(["bench", "--suite", "torch", "--repeat", "1", "-q", "--clock", "cpu",
                 "--json", str(out), "--check"]) == 0       # goals of 1e9 x are met
    assert "tiny causal" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["suite"] == "torch" and report["clock"] == "cpu" and report["threads"] == 1
    assert report["rows"][0]["met"] is True
    monkeypatch.setattr(bench_torch, "CASES",
                        (bench_torch.TorchCase("tiny causal", (9, 7), True, 1e-9),))
    assert main(["bench", "--suite", "torch", "--repeat", "1", "-q", "--check"]) == 1
