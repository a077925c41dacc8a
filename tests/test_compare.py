"""Identical test tasks for every model (eval.seed), and the paired comparisons built on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kml.analysis import compare, report
from kml.analysis.runs import find_results
from kml.run.evaluate import evaluate_and_report
from kml.run.logger import RunLogger
from kml.run.runtime import benchmark_for
from tests.configs import composed


class TaskRecorder:
    """A stand-in learner that records every test task it is given (and scores them at random)."""

    method_name = "Recorder"

    def __init__(self):
        self.tasks = []

    def evaluate(self, batch):
        self.tasks += [batch.support_x[t].clone() for t in range(batch.num_tasks)]
        return torch.rand(batch.num_tasks)

    def eval(self):
        pass

    def train(self):
        pass


def met_tasks(synthetic_root, tmp_path, *overrides):
    cfg = composed("debug=tiny", f"data.root={synthetic_root}", "eval.tasks_per_mode=7", "eval.meta_batch=7",
                   *overrides)
    learner = TaskRecorder()
    folder = tmp_path / "_".join(overrides)
    folder.mkdir()
    evaluate_and_report(learner, benchmark_for(cfg), cfg, folder, RunLogger(folder, mode="disabled"),
                        torch.device("cpu"), None, 0)
    return learner.tasks, folder


def test_two_training_seeds_meet_identical_test_tasks_and_a_mode_the_same_tasks_everywhere(synthetic_root, tmp_path):
    first, folder = met_tasks(synthetic_root, tmp_path, "seed=0")
    second, _ = met_tasks(synthetic_root, tmp_path, "seed=1")
    assert len(first) == 3 * 7 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other, _ = met_tasks(synthetic_root, tmp_path, "seed=0", "eval.seed=5")
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # A specialist on one mode meets that mode's tasks of the multimodal run (kml.run.evaluate.mode_seed).
    alone, _ = met_tasks(synthetic_root, tmp_path, "benchmark=custom", "benchmark.modes=[synthetic_shapes]")
    assert all(torch.equal(a, b) for a, b in zip(alone, first[7:14], strict=True))
    saved = np.load(folder / "test_tasks.npz")
    results = json.loads((folder / "results.json").read_text())
    assert list(saved["modes"]) == ["synthetic_glyphs", "synthetic_shapes", "synthetic_gratings"]
    assert saved["mode"].tolist() == [0] * 7 + [1] * 7 + [2] * 7 and int(saved["eval_seed"]) == 0
    assert results["overall"]["mean"] == pytest.approx(saved["accuracy"].mean())
    assert (results["seed"], results["eval_seed"], results["protocol"]) == (0, 0, "paper")


def test_paired_and_across_seed_statistics_by_hand():
    difference = np.array([0.2, 0.0, 0.4, 0.2])
    got = compare.paired(difference)
    assert got["mean"] == pytest.approx(0.2) and got["n"] == 4
    assert got["ci95"] == pytest.approx(1.96 * math.sqrt(((0 ** 2) + 0.2 ** 2 + 0.2 ** 2 + 0) / 3) / 2)
    three = compare.across_seeds([0.01, 0.03, 0.02])
    assert three["mean"] == pytest.approx(0.02) and three["seeds"] == 3
    assert three["ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))  # t_{0.975, 2} · std / √3
    assert compare.across_seeds([0.05])["ci95"] is None


def write_run(folder, method, benchmark, modes, accuracies, seed, protocol="paper", eval_seed=0, fingerprint=None):
    folder.mkdir(parents=True)
    accuracy = np.concatenate(accuracies)
    extra = {} if fingerprint is None else {"fingerprint": np.asarray(fingerprint, dtype=np.int64)}
    np.savez(folder / "test_tasks.npz", accuracy=accuracy, modes=np.array(modes), eval_seed=eval_seed,
             mode=np.concatenate([np.full(len(a), i) for i, a in enumerate(accuracies)]), **extra)
    summary = lambda a: {"mean": float(np.mean(a)), "ci95": 0.0, "n": len(a)}  # noqa: E731
    (folder / "results.json").write_text(json.dumps({
        "overall": summary(accuracy), "per_mode": {m: summary(a) for m, a in zip(modes, accuracies, strict=True)},
        "method": method, "benchmark": benchmark, "way": 5, "shot": 1, "seed": seed, "protocol": protocol}))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "val/accuracy": 0.5 + 0.01 * s + 0.1 * seed})
                                                    for s in (10, 20)))


def fabricated_study(root):
    """MAML and KML on 2 modes × 3 seeds: KML is MAML + 0.1 on omniglot tasks and + (0.01·seed) on the
    other; plus MAML specialists, a released ProtoNet and a ProtoNet 0.02 below it on omniglot (seed 0)."""
    g = np.random.default_rng(0)
    for seed in range(3):
        omniglot, mini = g.uniform(0.3, 0.8, 6), g.uniform(0.2, 0.6, 4)
        write_run(root / f"maml{seed}", "MAML", "2mode", ["omniglot", "miniimagenet"], [omniglot, mini], seed)
        write_run(root / f"kml{seed}", "MMAML+KML", "2mode", ["omniglot", "miniimagenet"],
                  [omniglot + 0.1, mini + 0.01 * seed], seed)
        if seed == 0:
            write_run(root / "spec_o", "MAML", "omniglot", ["omniglot"], [omniglot - 0.05], 0)
            write_run(root / "spec_m", "MAML", "miniimagenet", ["miniimagenet"], [mini + 0.05], 0)
            write_run(root / "proto", "ProtoNet", "2mode", ["omniglot", "miniimagenet"], [omniglot, mini], 0,
                      protocol="released")
            write_run(root / "proto_paper", "ProtoNet", "2mode", ["omniglot", "miniimagenet"],
                      [omniglot - 0.02, mini], 0)


def test_comparison_of_fabricated_runs_with_known_answers(tmp_path):
    fabricated_study(tmp_path)
    rows = compare.compare(compare.test_records(report.find_results([str(tmp_path)])), "MAML")
    kml = {r["mode"]: r for r in rows if r["method"] == "MMAML+KML"}
    assert kml["omniglot"]["mean"] == pytest.approx(0.1) and kml["omniglot"]["ci95"] == pytest.approx(0, abs=1e-12)
    assert kml["miniimagenet"]["mean"] == pytest.approx(0.01) and kml["miniimagenet"]["seeds"] == 3
    assert kml["miniimagenet"]["ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert kml["overall"]["mean"] == pytest.approx(np.mean([(0.6 + 0.04 * s) / 10 for s in range(3)]))
    assert [p["seed"] for p in kml["overall"]["per_seed"]] == [0, 1, 2]
    multi = {r["mode"]: r for r in rows if r["method"] == "Multi-MAML"}
    assert multi["omniglot"]["mean"] == pytest.approx(-0.05) and multi["miniimagenet"]["mean"] == pytest.approx(0.05)
    assert multi["overall"]["seeds"] == 1 and multi["overall"]["ci95"] is None
    released = {r["mode"]: r for r in rows if r["method"] == "ProtoNet [released]"}
    assert released["overall"]["mean"] == pytest.approx(0.0)


def test_report_command_writes_the_comparison_table_and_the_curves(tmp_path, capsys):
    fabricated_study(tmp_path / "runs")
    figure = tmp_path / "curves.png"
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--modes", "--compare", "MAML",
                        "--curves", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "+10.00 ± 0.00 (3 seeds)" in out and "ProtoNet [released]" in out
    table = (tmp_path / "out" / "compare_MAML.md").read_text()
    assert "| MMAML+KML |" in table and "paired over identical test tasks" in table
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The curves keep setups apart: a specialist's single-mode accuracy is not drawn among the 2-mode models'.
    curves = compare.validation_curves(find_results([str(tmp_path / "runs")]))
    assert len(curves) > 1 and all(len(runs) == 3 for runs in curves["2mode 5w1s"]["MMAML+KML"].values())
    assert not any("omniglot" in setup and "MMAML+KML" in methods for setup, methods in curves.items())
    main_table = (tmp_path / "out" / "report.md").read_text()
    assert "(3 seeds)" in main_table and "| ProtoNet [released] |" in main_table


def test_runs_that_met_other_tasks_are_refused(tmp_path, capsys):
    write_run(tmp_path / "a", "MAML", "2mode", ["omniglot", "miniimagenet"], [np.ones(3), np.ones(2)], 0)
    write_run(tmp_path / "b", "MMAML", "2mode", ["omniglot", "miniimagenet"], [np.ones(3), np.ones(2)], 0,
              eval_seed=7)
    assert report.main([str(tmp_path), "--compare", "MAML"]) == 2
    assert "met different test tasks" in capsys.readouterr().err
    assert report.main([str(tmp_path), "--compare", "Reptile"]) == 2


def test_the_test_tasks_carry_fingerprints_that_tell_tasks_apart(synthetic_root, tmp_path):
    _, folder = met_tasks(synthetic_root, tmp_path, "seed=0")
    _, same = met_tasks(synthetic_root, tmp_path, "seed=1")  # another training seed: the same test tasks
    _, other = met_tasks(synthetic_root, tmp_path, "seed=0", "eval.seed=5")
    first, second, third = (np.load(f / "test_tasks.npz")["fingerprint"] for f in (folder, same, other))
    assert first.dtype == np.int64 and len(first) == 21 and len(set(first.tolist())) == 21
    assert np.array_equal(first, second) and not np.intersect1d(first, third).size


def test_a_pair_whose_fingerprints_differ_is_refused_naming_both_runs(tmp_path, capsys):
    tasks = np.arange(5)
    write_run(tmp_path / "a", "MAML", "2mode", ["omniglot", "miniimagenet"], [np.ones(3), np.ones(2)], 0,
              fingerprint=tasks)
    write_run(tmp_path / "b", "MMAML", "2mode", ["omniglot", "miniimagenet"], [np.ones(3), np.ones(2)], 0,
              fingerprint=tasks + (tasks == 3))  # the same settings, one task fabricated to differ
    assert report.main([str(tmp_path), "--compare", "MAML"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "a") in err[0] and str(tmp_path / "b") in err[0]
    assert "met different test tasks (1 of 5 fingerprints differ, the first at task 3)" in err[0]


def test_pairs_are_verified_by_fingerprints_or_marked_unverified(tmp_path):
    tasks = np.arange(5)
    for name, method, fingerprint in (("a", "MAML", tasks), ("b", "MMAML", tasks), ("c", "MProtoNet", None)):
        write_run(tmp_path / "runs" / name, method, "2mode", ["omniglot", "miniimagenet"],
                  [np.ones(3), np.ones(2)], 0, fingerprint=fingerprint)
    rows = compare.compare(compare.test_records(report.find_results([str(tmp_path / "runs")])), "MAML")
    assert {r["method"]: r["verified"] for r in rows if r["mode"] == "overall"} == {"MMAML": True, "MProtoNet": False}
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--compare", "MAML"]) == 0
    assert "1 of 2 comparisons are unverified" in (tmp_path / "out" / "compare_MAML.md").read_text()


def test_task_sampling_halfwidth_matches_the_normal_interval_and_is_reproducible():
    values = np.random.default_rng(1).binomial(75, 0.6, 4000) / 75  # 4,000 tasks of 75 queries each
    analytic = 1.96 * np.std(values, ddof=1) / math.sqrt(len(values))
    got = compare.task_sampling_halfwidth(values, draws=4000)
    assert got == pytest.approx(analytic, rel=0.1)
    assert compare.task_sampling_halfwidth(values, seed=3) == compare.task_sampling_halfwidth(values, seed=3)
    assert compare.task_sampling_halfwidth(values, seed=3) != compare.task_sampling_halfwidth(values, seed=4)
    assert compare.task_sampling_halfwidth(np.full(50, 0.4)) == pytest.approx(0.0, abs=1e-12)


def test_task_sampling_halfwidth_within_groups_leaves_out_the_gap_between_them():
    g = np.random.default_rng(2)
    values = np.concatenate([g.normal(0.3, 0.1, 2000), g.normal(0.9, 0.05, 2000)])  # two modes far apart
    groups = np.repeat([0, 1], 2000)
    within = 1.96 * math.sqrt(2000 * 0.1 ** 2 + 2000 * 0.05 ** 2) / 4000  # the two modes' task counts are fixed
    assert compare.task_sampling_halfwidth(values, draws=4000, groups=groups) == pytest.approx(within, rel=0.1)
    assert compare.task_sampling_halfwidth(values, draws=4000) > 3 * within  # pooled, the gap counts as noise
    with pytest.raises(ValueError, match="one group per value"):
        compare.task_sampling_halfwidth(values, groups=groups[:10])
