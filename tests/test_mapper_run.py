"""The mapper runner end to end, without downloads: meta-train on the synthetic novel-name family with a
frozen tiny LM, evaluate by name and exact match, resume exactly, evaluate a checkpoint on Frozen-format
files (1 and 3 shots, answers as captions and as bare names)."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from kml.run import checkpoint
from kml.run.logger import RunLogger
from kml.run.mapper import run
from tests.mapper_fixtures import ROOT, mapper_config, single_thread, write_frozen  # noqa: F401
from tests.runs import launch

# 2-way 1-shot, novel classes at test time; a few seconds of meta-training on a CPU.
TINY = ["way=2", "mapper.train_data=novel_names", "mapper.eval_data=novel_names", "mapper.novel_names.image_size=32",
        "mapper.network.heads=4", "train.query=2", "train.log_every=10", "train.val_tasks_per_mode=4",
        "eval.query=3", "logger.mode=disabled"]


def run_mapper(run_dir, overrides):
    cfg = mapper_config(TINY + overrides)
    logger = RunLogger(run_dir, mode="disabled")
    try:
        return run(cfg, run_dir, logger)
    finally:
        logger.finish()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root, run_dir = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # set here: a module fixture is set up before the per-test `single_thread`
    try:
        results = run_mapper(run_dir, [f"data.root={root}", "train.iterations=60", "train.val_every=30",
                                       "eval.tasks_per_mode=30"])
    finally:
        torch.set_num_threads(threads)
    return root, run_dir, results


def test_adapted_accuracy_is_clearly_above_zero_step(trained):
    _, run_dir, results = trained
    assert json.loads((run_dir / "results.json").read_text()) == results
    adapted, zero = results["overall"], results["overall_0step"]
    assert adapted["n"] == zero["n"] == 30
    # Test names are bound to unseen classes by each task's support set only: without adaptation the
    # mapper cannot know them (0-step is near 0); 2-way exact match of the whole caption after 5 steps.
    assert adapted["mean"] > zero["mean"] + 0.2, results
    assert adapted["mean"] - adapted["ci95"] > zero["mean"] + zero["ci95"], results


def test_results_follow_the_runner_contract(trained):
    _, run_dir, results = trained
    assert results["method"] == "MetaMapper (tiny+tiny)" and results["benchmark"] == "novel_names"
    assert (results["way"], results["shot"]) == (2, 1)
    assert set(results["per_mode"]) == {"novel_names"} == set(results["per_mode_0step"])
    for key in ("overall", "overall_0step", "overall_exact", "overall_0step_exact"):
        assert set(results[key]) == {"mean", "ci95", "n"} and 0.0 <= results[key]["mean"] <= 1.0
    # Exact match of the whole caption is never more lenient than name match.
    assert results["overall_exact"]["mean"] <= results["overall"]["mean"]
    assert {"best.pt", "last.pt", "metrics.jsonl", "predictions.jsonl"} <= {p.name for p in run_dir.iterdir()}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in line for line in lines) and any("val/accuracy" in line for line in lines)
    prediction = json.loads((run_dir / "predictions.jsonl").read_text().splitlines()[0])
    assert set(prediction) == {"task", "prompt", "answer", "prediction", "prediction_0step"}
    assert checkpoint.load(run_dir / "last.pt")["iteration"] == 60


def test_eval_only_on_a_frozen_format_benchmark(trained, tmp_path):
    root, run_dir, _ = trained
    write_frozen(tmp_path / "frozen", "fast_vqa", way=2, shot=1, tasks=4, question="what is this dax?")
    results = run_mapper(tmp_path / "eval", [f"data.root={root}", "mapper.eval_data=fast_vqa",
                                             f"mapper.frozen.source={tmp_path / 'frozen'}", "eval_only=true",
                                             f"checkpoint={run_dir / 'best.pt'}"])
    assert results["benchmark"] == "fast_vqa" and results["overall"]["n"] == 4
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["what is this dax?"] * 4  # the question is read for VQA
    assert not (tmp_path / "eval" / "last.pt").exists()


def test_a_checkpoint_from_before_the_pipeline_rename_evaluates_alike(trained, tmp_path):
    """Checkpoints written while the mapper's settings were task.mapper / task.maml keep them there: they
    still load, and with the same network."""
    root, run_dir, _ = trained
    state = checkpoint.load(run_dir / "best.pt")
    mapper = state["config"].pop("mapper")
    state["config"]["task"] = {"name": "mapper", "mapper": mapper["network"], "maml": mapper["maml"]}
    checkpoint.save({k: v for k, v in state.items() if k != "format"}, tmp_path / "old.pt")
    common = [f"data.root={root}", "eval_only=true", "eval.tasks_per_mode=4"]
    new = run_mapper(tmp_path / "new", [*common, f"checkpoint={run_dir / 'best.pt'}"])
    old = run_mapper(tmp_path / "old", [*common, f"checkpoint={tmp_path / 'old.pt'}"])
    assert old["overall"] == new["overall"] and old["query_loss"] == new["query_loss"]


def test_both_answer_forms_score_alike_by_name_at_three_shots(trained, tmp_path):
    root, run_dir, _ = trained
    results = {}
    for answers in ("caption", "name"):
        write_frozen(tmp_path / answers, "open_ended_mi", way=2, shot=3, tasks=4, answers=answers)
        results[answers] = run_mapper(tmp_path / f"eval_{answers}", [
            f"data.root={root}", "shot=3shot", "mapper.eval_data=open_ended_mi", f"mapper.frozen.source={tmp_path / answers}",
            "eval_only=true", f"checkpoint={run_dir / 'best.pt'}"])
    caption, name = results["caption"], results["name"]
    assert (caption["shot"], caption["overall"]["n"]) == (3, 4)
    # The same predictions: by name the two forms score alike, whatever the mapper generates.
    assert caption["overall"] == name["overall"] and caption["overall_0step"] == name["overall_0step"]


@pytest.mark.parametrize("shot", [1, 3, 5])
@pytest.mark.parametrize("pipeline", ["fewshot", "mapper"])
def test_every_frozen_shot_count_composes_for_both_pipelines(pipeline, shot):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"pipeline={pipeline}", f"shot={shot}shot"])
    assert cfg.shot == shot and cfg.pipeline.name == pipeline


def test_resumed_training_equals_uninterrupted_training(trained, tmp_path):
    root = trained[0]
    common = [f"data.root={root}", "train.val_every=3", "train.checkpoint_every=1", "eval.tasks_per_mode=2"]
    run_mapper(tmp_path / "whole", common + ["train.iterations=6"])
    run_mapper(tmp_path / "split", common + ["train.iterations=3"])
    run_mapper(tmp_path / "split", common + ["train.iterations=6"])
    a, b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("whole", "split"))
    assert a["iteration"] == b["iteration"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_launch_py_runs_pipeline_mapper(tmp_path):
    done = launch(["pipeline=mapper", "vision=tiny", "lm=tiny", *TINY, "shot=3shot", "lm.random.pretrain_steps=20",
                   "train.iterations=2", "train.val_every=2",
                   "eval.tasks_per_mode=2", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["benchmark"], results["shot"]) == ("novel_names", 3)


def test_mapper_runs_are_tagged_as_mapper_runs():
    from launch import run_tags

    cfg = mapper_config(TINY + ["protocol=released"])
    assert run_tags(cfg, choices=None) == ["mapper", "novel_names", "novel_names", "tiny", "tiny", "2way",
                                           "1shot", "released_protocol"]


def test_milestones_are_refused_in_one_line(tmp_path):
    from kml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval.at=\[2\]: tests at milestones are built for pipeline=fewshot"):
        run_mapper(tmp_path, [f"data.root={tmp_path}", "eval.at=[2]"])
