"""Every user mistake ends in one clear line, before any training, and nothing is lost."""
import pytest
import torch

from kml.errors import TrainingDiverged
from kml.learners.protonet import ProtoNet
from kml.run import checkpoint
from kml.run.logger import RunLogger
from kml.run.train import run
from tests.runs import compose, error_line, launch, tiny_overrides


def test_unknown_option_names_the_valid_choices(synthetic_root, tmp_path):
    done = launch(tiny_overrides(synthetic_root) + ["modulation=kernel", f"hydra.run.dir={tmp_path}"])
    assert done.returncode != 0
    assert "Could not find 'modulation/kernel'" in done.stderr
    assert all(choice in done.stderr for choice in ("film", "kml", "none"))


def test_impossible_episode_fails_before_training(synthetic_root, tmp_path):
    # 20 images per synthetic class cannot give 5 shots + 16 queries
    done = launch(tiny_overrides(synthetic_root) + ["shot=5shot", "eval.query=16", f"hydra.run.dir={tmp_path}"])
    assert "fewer than shot+query=21" in error_line(done)
    assert not (tmp_path / "last.pt").exists()


def test_missing_data_names_the_prepare_command(tmp_path):
    done = launch(tiny_overrides(tmp_path / "empty") + ["benchmark=omniglot", f"hydra.run.dir={tmp_path / 'run'}"])
    assert "python -m kml.data prepare omniglot --source PATH" in error_line(done)


def test_bad_device_and_missing_checkpoint(synthetic_root, tmp_path):
    done = launch(tiny_overrides(synthetic_root) + ["device=tpu", f"hydra.run.dir={tmp_path / 'a'}"])
    assert "device='tpu' is not valid" in error_line(done) and "[auto, cpu, cuda]" in error_line(done)
    done = launch(tiny_overrides(synthetic_root) + ["eval_only=true", f"hydra.run.dir={tmp_path / 'b'}"])
    assert "needs checkpoint=PATH" in error_line(done)


def test_corrupt_checkpoint_is_refused(synthetic_root, tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    done = launch(tiny_overrides(synthetic_root) + ["eval_only=true", f"checkpoint={bad}",
                                                    f"hydra.run.dir={tmp_path / 'eval'}"])
    assert "is corrupt or truncated" in error_line(done)
    # A torn last.pt in a run folder is refused too, instead of silently restarting from scratch.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"\x80\x02garbage")
    done = launch(tiny_overrides(synthetic_root) + [f"hydra.run.dir={run_dir}"])
    assert "last.pt is corrupt or truncated" in error_line(done)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    cfg = compose(tiny_overrides(synthetic_root) + ["train.checkpoint_every=2", "train.val_every=100"])
    real_meta_loss, calls = ProtoNet.meta_loss, []

    def poisoned(self, batch):  # the 7th meta-batch carries NaN images, as a corrupt input would
        calls.append(1)
        if len(calls) == 7:
            batch.support_x = batch.support_x * float("nan")
        return real_meta_loss(self, batch)

    monkeypatch.setattr(ProtoNet, "meta_loss", poisoned)
    logger = RunLogger(tmp_path, mode="disabled")
    with pytest.raises(TrainingDiverged, match="loss is nan at iteration 7"):
        run(cfg, tmp_path, logger)
    logger.finish(1)
    state = checkpoint.load(tmp_path / "last.pt")
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "results.json").exists()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    checkpoint.save({"iteration": 1}, target)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"iteration": 2}, target)
    assert checkpoint.load(target)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize("overrides, message", [
    (["learner.transductive=foo"], "learner.transductive='foo' is not valid; choose one of none, released, corrected"),
    (["modulation=kml", "modulation.factors=[[1,2]]"], "modulation.factors has 1 pairs for 4 layers"),
    (["modulation=kml", "modulation.init=foo"], "modulation.init='foo' is not valid; choose one of identity, default"),
    (["backbone.init=foo"], "backbone.init='foo' is not valid; choose default or xavier"),
    (["learner.fast_path.tasks_per_pass=0"], "learner.fast_path.tasks_per_pass=0 is not valid; choose auto or a"),
    (["learner.fast_path.conv=fastest"], "learner.fast_path.conv='fastest' is not valid; choose one of true, false, auto"),
    (["data.mode_policy=random"], "data.mode_policy='random' is not valid; choose one of: balanced, uniform"),
    (["logger.mode=loud"], "logger.mode='loud' is not valid"),
])
def test_a_mistake_found_while_building_is_one_line(synthetic_root, tmp_path, overrides, message):
    """Learner, modulation, backbone, fast path, sampler and logger: each builder's check ends in the one
    `error:` line with the key and the valid values, exit status 2, no traceback, before any training."""
    done = launch(tiny_overrides(synthetic_root) + overrides + [f"hydra.run.dir={tmp_path}"])
    assert message in error_line(done)
    assert not (tmp_path / "last.pt").exists()
