"""`python -m kml.bench` as a smoke test: the tables have their rows and columns (no timing assertions)."""

from __future__ import annotations

import re

import pytest
import torch

from kml import bench
from kml.bench.profile import OperatorTimer
from kml.learners import build_learner
from tests.test_learners import random_batch, tiny_config


def table_rows(output: str, header: str) -> tuple[list[str], list[list[str]]]:
    """The header's columns and the rows (split on runs of 2+ spaces) of the table starting at `header`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    columns = lines[start].split()
    rows = []
    for line in lines[start + 2 :]:
        if not line or line.startswith(" "):
            break
        rows.append([cell for cell in line.split("  ") if cell.strip()])
    return columns, rows


def test_train_quick_prints_every_learner_modulation_order_and_path(capsys):
    bench.main(["train", "--quick"])
    output = capsys.readouterr().out
    header = "method"
    lines = output.splitlines()
    table_header = next(line for line in lines if line.startswith(header))
    for column in bench.COLUMNS:
        assert column in table_header
    _, rows = table_rows(output, header)
    seen = {(row[0].strip(), row[1].strip(), row[3].strip()) for row in rows}
    for method in ("MAML", "MMAML", "MMAML+KML"):
        for order in ("1st", "2nd"):
            assert {(method, order, "batched"), (method, order, "per-task")} <= seen
    for method in ("ProtoNet", "MProtoNet", "MProtoNet+KML"):
        assert {(method, "-", "batched"), (method, "-", "per-task")} <= seen
    if bench.higher_status() is None:
        assert {("MAML", "2nd", "higher"), ("MMAML+KML", "2nd", "higher")} <= seen
        assert "x the higher reference" in output
    else:
        assert "does not import" in output
    for row in rows:
        assert len(row) == len(bench.COLUMNS), row
        cells = dict(zip(bench.COLUMNS, (cell.strip() for cell in row), strict=True))
        for column in ("ms/iter", "CPU ms", "tasks/s", "GFLOP/iter", "GFLOP/s"):
            assert float(cells[column]) > 0, (column, row)
        assert float(cells["peak MB"]) >= 0 and cells["of matmul"].endswith("%")
    assert "matmul ceiling" in output and "load average" in output


def test_data_quick_prints_both_samplers(capsys, synthetic_root):
    bench.main(["data", "--quick", "--root", str(synthetic_root)])
    output = capsys.readouterr().out
    lines = [line for line in output.splitlines() if "episodes" not in line.split("  ")[0]]
    assert any(line.startswith("3-mode synthetic") for line in lines)
    assert any(line.startswith("1-mode synthetic_shapes") for line in lines)
    assert all(float(line.split()[-2]) > 0 for line in lines if "px" in line)


def test_flop_count_is_the_same_for_the_batched_and_per_task_paths():
    """torch's FlopCounterMode ignores `groups` in the conv weight gradient; the benchmark's formula
    does not, so the grouped convolutions of the batched path count the per-task loop's FLOPs."""
    torch.manual_seed(0)
    counts = []
    for batched in (False, True):
        learner = build_learner(
            tiny_config("maml", "kml", batched=batched, conv="grouped", channels=4, train_steps=2)
        )
        batch = random_batch(tasks=3, size=16)
        counts.append(
            bench.count_flops(lambda learner=learner, batch=batch: learner.meta_loss(batch)[0].backward())
        )
    assert counts[0] > 0
    assert abs(counts[1] - counts[0]) <= 0.01 * counts[0]


def test_peak_memory_sees_a_large_allocation():
    with bench.PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(16 * 2**20)  # 64 MiB
        del block
    assert memory.bytes >= 48 * 2**20


def test_profile_quick_prints_phases_and_the_operators_of_one_step(capsys):
    bench.main(["profile", "--quick", "--top", "5"])
    output = capsys.readouterr().out
    phases = dict(line.rsplit(None, 1) for line in output.splitlines()
                  if line.strip().startswith(("meta-loss forward", "of it: inner loop", "backward", "optimizer")))
    assert set(map(str.strip, phases)) == {"meta-loss forward", "of it: inner loop", "backward", "optimizer step"}
    assert all(float(ms) > 0 for ms in phases.values())
    summary = re.search(r"under the timer \(([\d.]+) ms; the operators' own ([\d.]+) ms, (\d+) calls\)", output)
    step_ms, operator_ms, calls = float(summary[1]), float(summary[2]), int(summary[3])
    assert 0 < operator_ms <= step_ms and calls > 100  # nested calls are not counted twice
    rows = output.split("operator\n", 1)[1].splitlines()
    assert len(rows) == 5 and any("convolution" in row for row in rows)


def test_profile_of_protonet_has_no_inner_loop_and_higher_is_maml_only(capsys):
    bench.main(["profile", "--quick", "--learner", "protonet", "--modulation", "none", "--by-shape"])
    output = capsys.readouterr().out
    assert "meta-loss forward" in output and "inner loop" not in output
    assert re.search(r"convolution \[\(\d+, \d+, \d+, \d+\)", output)  # --by-shape: shapes in the keys
    with pytest.raises(SystemExit, match="use --learner maml"):
        bench.main(["profile", "--quick", "--learner", "protonet", "--path", "higher"])


def test_operator_timer_counts_each_aten_call_once():
    timer = OperatorTimer(by_shape=True)
    a = torch.ones(2, 3)
    with timer:
        b = torch.mm(a, a.t()) + 1
        b.sum()
    assert timer.calls == {"mm [(2, 3), (3, 2)]": 1, "add [(2, 2)]": 1, "sum [(2, 2)]": 1, "t [(2, 3)]": 1}
    assert all(seconds >= 0 for seconds in timer.seconds.values())
