"""Tests at milestones (eval.at): which weights they take, that a resumed run neither repeats nor skips one,
that they leave training as it was, and that reports pair runs at a milestone they share."""
import csv
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kml.analysis import report
from kml.analysis.compare import accuracy_at_iterations
from kml.analysis.runs import find_results, iterations_tested
from kml.run import checkpoint
from kml.run.logger import RunLogger
from kml.run.loop import MetaTraining, meta_train
from tests.runs import error_line, launch, tiny_overrides

CFG = OmegaConf.create({"train": {"iterations": 8, "log_every": 2, "val_every": 2, "checkpoint_every": 100,
                                  "checkpoint_minutes": 5, "resume": True, "lr_halving_every": None},
                        "eval": {"checkpoint": "best"}})
SCORES = {2: 0.5, 4: 0.2, 6: 0.9, 8: 0.4}  # validation after these iterations: best so far is 2, 2, 6, 6


class Killed(Exception):
    """Stands for a kill at a chosen point of the run."""


def toy_job(tested: list, kill_at: int | None = None, kill_after_test: int | None = None) -> MetaTraining:
    """A one-layer model whose test records (iteration, weights iteration, a weight) and writes results.json."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    steps = []

    def compute_gradients(iteration: int) -> dict:
        if iteration + 1 == kill_at:
            raise Killed
        steps.append(iteration + 1)
        model(torch.ones(1, 2)).sum().backward()
        return {"loss": 1.0}

    def validate() -> dict:
        return {"score": SCORES[steps[-1]]}

    def test(step, folder, weights_iteration):
        tested.append((step, weights_iteration, model.weight.detach().clone()))
        folder.mkdir(parents=True)
        (folder / "results.json").write_text("{}")
        if step == kill_after_test:
            raise Killed

    return MetaTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), compute_gradients, validate,
                        score="score", higher_is_better=True, divergence_hint="", test_at=(2, 5, 6, 8), test=test)


def train(run_dir, job):
    return meta_train(job, CFG, run_dir, RunLogger(run_dir, mode="disabled"))


def test_a_milestone_tests_the_best_weights_so_far_and_training_goes_on_from_the_current(tmp_path):
    tested = []
    assert train(tmp_path / "run", toy_job(tested)) == 6  # the run's own test: best.pt of iteration 6
    # 8 is the last iteration: the run's own test covers it. 5 falls between validations: best so far is 2.
    assert [(step, weights) for step, weights, _ in tested] == [(2, 2), (5, 2), (6, 6)]
    assert torch.equal(tested[1][2], tested[0][2])  # iteration 5 tested the weights of iteration 2
    plain = MetaTraining(**{**toy_job([]).__dict__, "test_at": ()})
    train(tmp_path / "plain", plain)
    with_tests, without = (checkpoint.load(tmp_path / name / "last.pt")["model"] for name in ("run", "plain"))
    assert all(torch.equal(with_tests[k], without[k]) for k in without)  # the tests left the weights alone
    assert sorted(p.name for p in (tmp_path / "run" / "milestones").iterdir()) == ["2", "5", "6"]


def test_eval_checkpoint_last_tests_the_current_weights(tmp_path):
    tested = []
    meta_train(toy_job(tested), OmegaConf.merge(CFG, {"eval": {"checkpoint": "last"}}), tmp_path,
               RunLogger(tmp_path, mode="disabled"))
    assert [(step, weights) for step, weights, _ in tested] == [(2, 2), (5, 5), (6, 6)]
    assert not torch.equal(tested[0][2], tested[1][2])


@pytest.mark.parametrize("kill_at, kill_after_test, tested_before, tested_after", [
    (6, None, [2, 5], [6]),       # killed in training past milestone 5 (last.pt of 5): resumes at 5, tests 6
    (None, 6, [2, 5, 6], []),     # killed after testing 6, before its last.pt: retrains 6, does not test it again
    (5, None, [2], [5, 6]),       # killed in iteration 5, before its test: last.pt of 4, tests 5 and 6
])
def test_a_resumed_run_neither_repeats_nor_skips_a_milestone(tmp_path, kill_at, kill_after_test, tested_before,
                                                             tested_after):
    before, after = [], []
    with pytest.raises(Killed):
        train(tmp_path, toy_job(before, kill_at, kill_after_test))
    train(tmp_path, toy_job(after))
    assert [step for step, *_ in before] == tested_before and [step for step, *_ in after] == tested_after
    whole = []
    train(tmp_path / "whole", toy_job(whole))
    assert [w for _, w, _ in before + after] == [w for _, w, _ in whole]  # the same weights at every milestone
    assert all(torch.equal(a[2], b[2]) for a, b in zip(before + after, whole, strict=True))


def test_a_run_that_starts_over_drops_the_milestones_of_the_run_it_replaces(tmp_path):
    train(tmp_path, toy_job([]))
    stale = tmp_path / "milestones" / "5" / "from_the_replaced_run"
    stale.touch()
    tested = []
    meta_train(toy_job(tested), OmegaConf.merge(CFG, {"train": {"resume": False}}), tmp_path,
               RunLogger(tmp_path, mode="disabled"))
    assert [step for step, *_ in tested] == [2, 5, 6] and not stale.exists()


def tiny_run(synthetic_root, run_dir, learner, *overrides):
    done = launch(tiny_overrides(synthetic_root, learner) + ["train.iterations=20", *overrides,
                                                            f"hydra.run.dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def saved_tasks(folder):
    with np.load(folder / "test_tasks.npz") as saved:
        return saved["accuracy"], saved["fingerprint"]


def test_milestones_through_launch_match_shorter_runs_and_pair_in_the_report(synthetic_root, tmp_path):
    long = tmp_path / "long"
    done = tiny_run(synthetic_root, long, "protonet", "eval.at=[10,20]")
    assert "iteration 10" in done.stdout
    milestone = json.loads((long / "milestones" / "10" / "results.json").read_text())
    assert (milestone["iteration"], milestone["weights_iteration"], milestone["milestone"]) == (10, 10, True)
    assert json.loads((long / "results.json").read_text())["iteration"] == 20
    assert not (long / "milestones" / "20").exists()  # the run's own test is its test at 20
    # A run that stops at 10 is tested with the same weights on the same tasks: the same numbers.
    short = tmp_path / "short"
    tiny_run(synthetic_root, short, "protonet", "train.iterations=10")
    for a, b in zip(saved_tasks(long / "milestones" / "10"), saved_tasks(short), strict=True):
        assert np.array_equal(a, b)
    # Testing along the way leaves the run as it was.
    plain = tmp_path / "plain"
    tiny_run(synthetic_root, plain, "protonet")
    for a, b in zip(saved_tasks(long), saved_tasks(plain), strict=True):
        assert np.array_equal(a, b)

    # Another method tested at 10 along the way pairs with both at iteration 10.
    tiny_run(synthetic_root, tmp_path / "maml", "maml", "eval.at=[10]")
    folders = [str(long), str(short), str(tmp_path / "maml")]
    assert iterations_tested(folders) == [10, 20]
    assert {(r["method"], r["iteration"]) for r in find_results(folders)} == {("ProtoNet", 20), ("ProtoNet", 10),
                                                                             ("MAML", 20)}
    at_10 = find_results([str(long), str(tmp_path / "maml")], at=10)
    assert sorted(r["method"] for r in at_10) == ["MAML", "ProtoNet"]
    out = tmp_path / "report"
    assert report.main([str(long), str(tmp_path / "maml"), "--at", "10", "--compare", "ProtoNet", "--out", str(out),
                        "--schedule", str(out / "schedule.png")]) == 0
    with open(out / "compare_ProtoNet.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["mode"] == "overall"]
    maml, protonet = (saved_tasks(folder / "milestones" / "10")[0] for folder in (tmp_path / "maml", long))
    assert row["method"] == "MAML" and float(row["paired_mean"]) == pytest.approx((maml - protonet).mean())
    curves = accuracy_at_iterations([str(long), str(tmp_path / "maml")])["synthetic 5w1s"]
    assert set(curves) == {"ProtoNet", "MAML"} and set(curves["ProtoNet"]) == {10, 20}
    assert (out / "schedule.png").stat().st_size > 0
    # An iteration no run was tested at: one line naming those that were.
    assert report.main([str(long), "--at", "15", "--out", str(out)]) == 2


@pytest.mark.parametrize("at", ["[0]", "[21]", "[10,abc]", "10"])
def test_milestones_outside_the_run_are_refused_in_one_line(synthetic_root, tmp_path, at):
    done = launch(tiny_overrides(synthetic_root) + [f"eval.at={at}", f"hydra.run.dir={tmp_path}"])
    assert "eval.at=" in error_line(done) and "train.iterations=20" in error_line(done)
