"""minispec/timeline.py's pure part (CPU): kernel records in, a step's layer table out. The records are made up, with
the overlaps programmatic dependent launch gives a real step, and the expected times are worked out by hand."""

import pytest

from minispec.errors import MinispecError
from minispec.timeline import KernelRecords, StepTimeline, layer_period, marginal_times, short_name


def made_up_step(t0: int, layers: int = 6) -> list[tuple[int, int, str, int]]:
    """One step's records (ns): embedding, then per layer norm -> gemm -> attention, then the head. Each layer's
    norm starts 1 µs before the gemm ahead of it ends (an early launch) and ends 2 µs after it; the gemm runs
    10 µs from the norm's end; attention starts 3 µs after the gemm ends (an idle gap) and runs 4; the layer's
    last 1 µs of attention overlaps a short kernel ("tail") that ends under it."""
    records, t = [(t0, t0 + 5_000, "embedding", 1)], t0 + 5_000
    for _ in range(layers):
        records.append((t - 1_000, t + 2_000, "add_rmsnorm", 64))
        t += 2_000
        records.append((t, t + 10_000, "gemm", 96))
        t += 10_000
        records.append((t + 3_000, t + 7_000, "attention", 128))
        records.append((t + 5_000, t + 6_000, "tail", 8))
        t += 7_000
    records.append((t, t + 20_000, "lm_head", 132))
    return records


def test_marginal_times_add_up_to_the_span_and_charge_overlap_and_idle_right():
    run = sorted(made_up_step(0, layers=1))
    own, marginal, idle = marginal_times(run)
    names = [r[2] for r in run]
    assert names == ["embedding", "add_rmsnorm", "gemm", "attention", "tail", "lm_head"]
    assert list(own) == [5, 3, 10, 4, 1, 20]
    # the norm started under the embedding: it adds 2 µs; the tail ends under attention: it adds none
    assert list(marginal) == [5, 2, 10, 7, 0, 20]
    assert list(idle) == [0, 0, 0, 3, 0, 0]
    assert marginal.sum() == pytest.approx((run[-1][1] - run[0][0]) / 1e3)


def test_layer_period_finds_the_repeat_and_where_it_starts():
    names = ["embedding", "first_norm"] + ["norm", "qkv", "rope", "attn"] * 8 + ["final_norm", "head", "argmax"]
    assert layer_period(names) == (4, 2)
    with pytest.raises(MinispecError, match="no repeating layer"):
        layer_period(["a", "b", "c", "d", "e", "f", "g", "h"])


def test_a_step_timeline_over_replays_gives_the_layer_table():
    replays = [made_up_step(t0) for t0 in (0, 1_000_000, 2_000_000)]
    records = sorted(r for replay in replays for r in replay)
    timeline = StepTimeline.of(records, 3)
    assert (timeline.period, timeline.first, timeline.layers) == (4, 1, 6)
    rows = {name: (blocks, own, marginal, idle) for name, blocks, own, marginal, idle in timeline.layer_rows()}
    assert rows == {"add_rmsnorm": (64, 3, 2, 0), "gemm": (96, 10, 10, 0), "attention": (128, 4, 7, 3), "tail": (8, 1, 0, 0)}
    assert timeline.outside_rows() == [("embedding", 5.0), ("lm_head", 20.0)]
    assert timeline.span == pytest.approx(5 + 6 * 19 + 20)
    assert timeline.idle.sum() == pytest.approx(6 * 3)
    text = timeline.table()
    assert "attention" in text and "outside the layers: embedding 5.0, lm_head 20.0" in text


def test_a_step_timeline_refuses_records_that_are_not_whole_replays():
    records = sorted(made_up_step(0) + made_up_step(1_000_000))
    with pytest.raises(MinispecError, match="replays"):
        StepTimeline.of(records[:-1], 2)
    other = [(s, e, "other" if name == "gemm" else name, b) for s, e, name, b in made_up_step(1_000_000)]
    with pytest.raises(MinispecError, match="different kernels"):
        StepTimeline.of(sorted(made_up_step(0) + other), 2)


def test_short_names_drop_the_cxx_decoration():
    assert short_name("add_rmsnorm") == "add_rmsnorm"
    assert short_name("_Z10cupy_copy_PKfPf") == "cupy_copy_"
    assert short_name("void gemm_kernel<float>(float*)") == "gemm_kernel<float>"


def test_kernel_records_need_cupti(monkeypatch):
    """Without cupti-python the benchmark says what to install (the CI machine has none; where it is installed the
    import is hidden)."""
    import builtins

    real_import = builtins.__import__

    def no_cupti(name, *args, **kwargs):
        if name == "cupti":
            raise ImportError("no cupti")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupti)
    with pytest.raises(MinispecError, match="pip install cupti-python"):
        KernelRecords()
