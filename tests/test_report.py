import json
import math

import numpy as np
import pytest

from kml.analysis import report
from kml.run.evaluate import mean_ci


def write(folder, method, benchmark, per_mode_accuracies, shot=1):
    folder.mkdir(parents=True)
    per_mode = {mode: mean_ci(acc) for mode, acc in per_mode_accuracies.items()}
    everything = [a for acc in per_mode_accuracies.values() for a in acc]
    (folder / "results.json").write_text(json.dumps({
        "overall": mean_ci(everything), "per_mode": per_mode, "method": method, "benchmark": benchmark,
        "shot": shot, "way": 5}))


def test_pooled_equals_statistics_over_all_tasks():
    a, b = [0.2, 0.4, 0.9], [0.5, 0.7, 0.6, 0.1]
    got = report.pooled([mean_ci(a), mean_ci(b)])
    want = mean_ci(a + b)
    assert got["n"] == want["n"] and math.isclose(got["mean"], want["mean"])
    assert math.isclose(got["ci95"], want["ci95"])


def test_table_with_multi_rows_and_published(tmp_path, monkeypatch, capsys):
    write(tmp_path / "a", "MAML", "2mode", {"omniglot": [0.9, 0.8], "miniimagenet": [0.4, 0.5]})
    write(tmp_path / "b", "MMAML+KML", "2mode", {"omniglot": [0.95, 0.9], "miniimagenet": [0.5, 0.6]})
    write(tmp_path / "c", "MAML", "omniglot", {"omniglot": [1.0, 0.9]})
    write(tmp_path / "d", "MAML", "miniimagenet", {"miniimagenet": [0.3, 0.5]})
    write(tmp_path / "e", "MAML", "fc100", {"fc100": [0.3, 0.5]})  # no multimodal setup uses it alone
    assert report.main([str(tmp_path), "--published"]) == 0
    out = capsys.readouterr().out
    table = {line.split("  ")[0]: line for line in out.splitlines()}
    # The paper's Table: MAML on 2Mode (Omniglot + mini-ImageNet), 5-way 1-shot, 65.18 ± 0.61.
    assert "Multi-MAML" in table and "MAML (paper)" in table and "65.18 ± 0.61" in table["MAML (paper)"]
    assert "66.77 ± 0.68" in table["Multi-MAML (paper)"] and "68.01 ± 0.59" in table["MMAML+KML (paper)"]
    multi = report.multi_rows(report.find_results([str(tmp_path)]))
    assert len(multi) == 1 and multi[0]["benchmark"] == "2mode"
    assert multi[0]["overall"]["mean"] == pytest.approx((1.0 + 0.9 + 0.3 + 0.5) / 4)
    assert "| Multi-MAML |" in (tmp_path / "report.md").read_text()
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0] == "method,setup,mode,source,seed,mean,ci95,n"
    assert any(r.startswith("Multi-MAML,2mode 5w1s,overall,ours,0,") for r in rows)


def test_per_mode_columns(tmp_path):
    write(tmp_path / "a", "MAML", "2mode", {"omniglot": [0.9, 0.8], "miniimagenet": [0.4, 0.5]})
    write(tmp_path / "c", "MAML", "omniglot", {"omniglot": [1.0, 0.9]})
    write(tmp_path / "d", "MAML", "miniimagenet", {"miniimagenet": [0.3, 0.5]})
    header, rows, records = report.build_table(report.find_results([str(tmp_path)]), published=True, modes=True)
    # The multimodal setup first, its modes then overall; then the specialists' own setups.
    assert header == ["method", "2mode 5w1s miniimagenet", "2mode 5w1s omniglot", "2mode 5w1s overall",
                      "miniimagenet 5w1s miniimagenet", "omniglot 5w1s omniglot"]
    assert [row[0] for row in rows] == ["MAML", "MAML (paper)", "Multi-MAML", "Multi-MAML (paper)"]
    table = {row[0]: row[1:] for row in rows}
    assert table["MAML"][:3] == ["45.00 ± 9.80", "85.00 ± 9.80", "65.00 ± 23.33"]
    assert table["MAML (paper)"] == ["", "", "65.18 ± 0.61", "", ""]  # published: overall only
    # Multi-MAML per mode is each specialist's own result; its overall pools them.
    assert table["Multi-MAML"][:3] == ["40.00 ± 19.60", "95.00 ± 9.80", "67.50 ± 32.38"]
    assert {r["mode"] for r in records} == {"omniglot", "miniimagenet", "overall"}


def test_two_runs_of_one_cell_and_seed_are_pooled(tmp_path):
    write(tmp_path / "s0", "ProtoNet", "3mode", {"a": [0.5, 0.6]})
    write(tmp_path / "s1", "ProtoNet", "3mode", {"a": [0.7, 0.8]})
    header, rows, _ = report.build_table(report.find_results([str(tmp_path)]), published=False)
    assert header == ["method", "3mode 5w1s"] and rows[0][1].startswith("65.00 ±")


def test_missing_or_empty_folders_are_one_line_errors(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "does not exist" in err[0] and "no results.json" in err[1]


def test_transference_grid_of_a_sweep(tmp_path, capsys):

    for folder, method in (("k", "MMAML+KML"), ("m", "MAML")):
        write(tmp_path / folder, method, "2mode", {"omniglot": [0.9], "miniimagenet": [0.4]})
        (tmp_path / folder / "transference").mkdir()
        for step in (100, 1000):
            np.savez(tmp_path / folder / "transference" / f"lr_step{step}.npz", lr=np.linspace(0.9, 1.2, 8)[None],
                     source_mode="omniglot", target_mode="miniimagenet", split="test")
    grid = report.transference_by_method(report.find_results([str(tmp_path)]))
    assert list(grid) == ["MAML", "MMAML+KML"] and sorted(grid["MAML"]) == [100, 1000]
    assert grid["MAML"][100].shape == (1, 8)
    figure = tmp_path / "transference.png"
    assert report.main([str(tmp_path), "--transference", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {figure}" in capsys.readouterr().out


def test_transference_table_pools_seeds_and_counts_positive_transfer(tmp_path):
    seeds = {0: [[0.9, 0.95, 1.1, 1.2]], 1: [[0.9, 0.99, 0.98, 0.97]]}  # 2 and 4 of 4 sources helped
    for seed, lr in seeds.items():
        folder = tmp_path / f"seed{seed}"
        write(folder, "MAML", "2mode", {"omniglot": [0.9], "miniimagenet": [0.4]})
        (folder / "transference" / "reverse").mkdir(parents=True)
        np.savez(folder / "transference" / "lr_step100.npz", lr=np.array(lr), source_mode="miniimagenet",
                 target_mode="omniglot", split="test")
        if seed == 0:  # the reverse direction measured in one run only, at another step
            np.savez(folder / "transference" / "reverse" / "lr_step200.npz", lr=np.array([[1.5, 0.5]]),
                     source_mode="omniglot", target_mode="miniimagenet", split="test")
    runs = report.find_results([str(tmp_path)])
    assert report.transference_by_method(runs)["MAML"][100].shape == (2, 4)
    header, rows = report.transference_table(report.transference_grids(runs))
    assert header == ["LR < 1", "miniimagenet → omniglot (test), it. 100", "omniglot → miniimagenet (test), it. 200"]
    assert rows == [["MAML", "75% (8)", "50% (2)"]]
    figure = tmp_path / "out" / "transference.png"
    figure.parent.mkdir()
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--transference", str(figure)]) == 0
    assert "| MAML | 75% (8) | 50% (2) |" in (tmp_path / "out" / "transference.md").read_text()


def test_published_keys_are_names_runs_write():
    """Every published (method, benchmark) is what a run of this repository writes into results.json (or the
    report's Multi- row of its specialists), so --published can never miss a row by a spelling."""
    from kml.analysis.published import PUBLISHED
    from kml.learners import method_name
    from tests.configs import COMBINATIONS, composed, options

    methods = {method_name(composed(f"learner={lrn}", f"modulation={mod}")) for lrn, mod in COMBINATIONS}
    methods |= {f"Multi-{m}" for m in methods}
    keys = {(method, benchmark, way, shot) for method, benchmark, way, shot in PUBLISHED}
    assert {m for m, *_ in keys} <= methods and {b for _, b, *_ in keys} <= set(options("benchmark"))
    assert len(PUBLISHED) == 8 * 4 * 2 and {(w, s) for *_, w, s in keys} == {(5, 1), (5, 5)}


def test_published_numbers_equal_the_shared_transcription():
    from kml.analysis.published import PUBLISHED
    from tests.conftest import SHARED_DATA

    source = SHARED_DATA.parent / "paper" / "kml_neurips2021_results.json"
    if not source.is_file():
        pytest.skip(f"{source} is absent (the shared folder holds the paper's tables)")
    table = json.loads(source.read_text())
    expected = {(method, setup, table["way"], int(shot)): tuple(value)
                for method, setups in table["results"].items() for setup, shots in setups.items()
                for shot, value in shots.items()}
    assert PUBLISHED == expected


def test_custom_benchmarks_are_set_apart_by_their_modes(tmp_path):
    # benchmark=custom names every list of modes alike: the multimodal run and the specialists must not share a cell.
    write(tmp_path / "both", "ProtoNet", "custom", {"omniglot": [0.9, 0.7], "scans": [0.5, 0.1]})
    write(tmp_path / "other", "ProtoNet", "custom", {"scans": [0.6, 0.4], "xrays": [0.2, 0.2]})
    write(tmp_path / "alone", "ProtoNet", "custom", {"scans": [1.0, 0.8]})
    write(tmp_path / "omniglot", "ProtoNet", "omniglot", {"omniglot": [0.4, 0.2]})  # a built-in specialist joins in
    header, rows, _ = report.build_table(report.find_results([str(tmp_path)]), published=False)
    assert header == ["method", "omniglot+scans 5w1s", "scans+xrays 5w1s", "omniglot 5w1s", "scans 5w1s"]
    table = {row[0]: row[1:] for row in rows}
    assert [cell.split(" ±")[0] for cell in table["ProtoNet"]] == ["55.00", "35.00", "30.00", "90.00"]
    assert [cell.split(" ±")[0] for cell in table["Multi-ProtoNet"]] == ["60.00", "", "", ""]  # no xrays specialist
