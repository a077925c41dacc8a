"""`python launch.py task=mapper ...`: meta-train the meta-mapper, evaluate it, write results.json.

Same contract as kml.train.run: periodic validation keeps best.pt (lowest adapted query loss on held-out
tasks), last.pt is written atomically for exact resume, `eval_only=true checkpoint=PATH` evaluates a saved
mapper. Task i of training is a function of (seed, i) alone, so resuming needs only the iteration.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from kml import checkpoint
from kml.errors import ConfigError
from kml.evaluate import mean_ci, write_results
from kml.logger import RunLogger
from kml.loop import MetaTraining, meta_train
from kml.mapper.encoders import load_lm
from kml.mapper.frozen_lm import FrozenLM
from kml.mapper.maml import MapperMAML
from kml.mapper.mapper import MetaMapper, embedding_scale
from kml.mapper.sources import test_tasks, training_episodes
from kml.train import TEST_SEED_OFFSET, VAL_SEED_OFFSET, pick_device, seed_everything

PAPER_SETUP = ("clip_vit_b32", "gpt2")


def method_name(cfg: DictConfig) -> str:
    pair = (cfg.vision.name, cfg.lm.name)
    return "MetaMapper" if pair == PAPER_SETUP else f"MetaMapper ({pair[0]}+{pair[1]})"


def logger_tags(cfg: DictConfig) -> list[str]:
    """W&B tags for a mapper run (the classification tags of launch.py do not apply)."""
    return ["mapper", cfg.task.train_data, cfg.task.eval_data, cfg.vision.name, cfg.lm.name,
            f"{cfg.way}way", f"{cfg.shot}shot"]


def build_learner(cfg: DictConfig, lm: FrozenLM, visual_dim: int) -> MapperMAML:
    spec, maml = cfg.task.mapper, cfg.task.maml
    if lm.embed_dim % int(spec.heads):
        raise ConfigError(f"task.mapper.heads={spec.heads} does not divide the LM embedding size {lm.embed_dim}")
    mapper = MetaMapper(visual_dim, lm.embed_dim, int(spec.prefix_length), int(spec.heads),
                        float(spec.dropout), embedding_scale(lm.model))
    return MapperMAML(mapper, lm, float(maml.inner_lr), int(maml.train_steps), int(maml.test_steps),
                      bool(maml.first_order)).to(lm.device)


def evaluate(learner: MapperMAML, sampler, count: int, cfg: DictConfig, desc: str,
             predictions: Path | None = None) -> dict[str, list[float]]:
    """Per-task adapted and 0-step exact-match accuracy and adapted query loss over tasks 0..count-1."""
    out = {"accuracy": [], "accuracy_0step": [], "query_loss": []}
    sink = open(predictions, "w") if predictions else None
    try:
        for index in tqdm(range(count), desc=desc, unit="task", leave=False, mininterval=1.0):
            task = sampler.task(index)
            result = learner.evaluate(task, int(cfg.task.max_new_tokens))
            for key in out:
                out[key].append(result[key])
            if sink:
                for i, answer in enumerate(task.query_answer):
                    sink.write(json.dumps({"task": index, "prompt": task.query_prompt[i], "answer": answer,
                                           "prediction": result["predictions"][i],
                                           "prediction_0step": result["predictions_0step"][i]}) + "\n")
    finally:
        if sink:
            sink.close()
    return out


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict:
    device = pick_device(cfg.device)
    threads = cfg.task.get("threads") or os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:  # tiny models run fastest on one thread; on a SLURM node torch would take every core
        torch.set_num_threads(int(threads))
    seed_everything(cfg.seed)
    test, count = test_tasks(cfg, cfg.seed + TEST_SEED_OFFSET, device)  # fails early if the data is missing
    lm = FrozenLM(*load_lm(cfg.lm, device), max_target_tokens=int(cfg.task.max_caption_tokens))
    if cfg.eval_only:
        learner = load_for_eval(cfg, lm, test.features.shape[-1])
    else:
        learner = train(cfg, run_dir, logger, lm, device)
    scores = evaluate(learner, test, count, cfg, "test", run_dir / "predictions.jsonl")
    name = cfg.task.eval_data
    results = {"overall": mean_ci(scores["accuracy"]), "per_mode": {name: mean_ci(scores["accuracy"])},
               "overall_0step": mean_ci(scores["accuracy_0step"]),
               "per_mode_0step": {name: mean_ci(scores["accuracy_0step"])},
               "query_loss": mean_ci(scores["query_loss"]), "method": method_name(cfg), "benchmark": name,
               "shot": int(cfg.shot), "way": int(cfg.way), "vision": cfg.vision.name, "lm": cfg.lm.name}
    write_results(run_dir / "results.json", results)
    adapted, zero = results["overall"], results["overall_0step"]
    print(f"\n{results['method']} on {name}, {cfg.way}-way {cfg.shot}-shot, {adapted['n']} tasks (exact match)")
    print(f"adapted ({learner.test_steps} steps): {100 * adapted['mean']:6.2f} ± {100 * adapted['ci95']:5.2f}")
    print(f"0 steps:            {100 * zero['mean']:6.2f} ± {100 * zero['ci95']:5.2f}")
    logger.log_table("test/results", ["benchmark", "accuracy", "ci95", "accuracy_0step", "tasks"],
                     [[name, adapted["mean"], adapted["ci95"], zero["mean"], adapted["n"]]])
    logger.summary({"test/accuracy": adapted["mean"], "test/accuracy_0step": zero["mean"],
                    f"test/{name}/accuracy": adapted["mean"]})
    return results


def load_for_eval(cfg: DictConfig, lm: FrozenLM, visual_dim: int) -> MapperMAML:
    if not cfg.checkpoint:
        raise ConfigError("eval_only=true needs checkpoint=PATH (a mapper run's best.pt or last.pt)")
    state = checkpoint.load(cfg.checkpoint)
    # The mapper's shape and MAML settings come from the checkpoint; data, LM and protocol from this run.
    saved = OmegaConf.create(state["config"])
    learner = build_learner(OmegaConf.merge(cfg, {"task": {"mapper": saved.task.mapper, "maml": saved.task.maml}}),
                            lm, visual_dim)
    try:
        learner.mapper.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ConfigError(f"{cfg.checkpoint} does not fit this vision/lm pair (it was trained with "
                          f"vision={saved.vision.name} lm={saved.lm.name})") from err
    print(f"evaluating {cfg.checkpoint} (iteration {state['iteration']})")
    return learner


def train(cfg: DictConfig, run_dir: Path, logger: RunLogger, lm: FrozenLM, device) -> MapperMAML:
    episodes = training_episodes(cfg, "train", int(cfg.train.query), cfg.seed, device)
    validation = training_episodes(cfg, "val", int(cfg.train.query), cfg.seed + VAL_SEED_OFFSET, device)
    learner = build_learner(cfg, lm, episodes.features.shape[-1])
    learner.mapper.set_feature_statistics(episodes.features)
    optimizer = torch.optim.AdamW(learner.mapper.parameters(), lr=float(cfg.task.optimizer.lr),
                                  weight_decay=float(cfg.task.optimizer.weight_decay))
    print(f"meta-mapper: {sum(p.numel() for p in learner.mapper.parameters()):,} trainable parameters; "
          f"frozen LM {sum(p.numel() for p in lm.model.parameters()):,}")
    batch = int(cfg.train.meta_batch)

    def compute_gradients(iteration: int) -> dict[str, float]:
        return learner.meta_backward([episodes.task(iteration * batch + j) for j in range(batch)])

    def validate() -> dict[str, float]:
        val = evaluate(learner, validation, int(cfg.train.val_tasks_per_mode), cfg, "validate")
        return {key: mean_ci(values)["mean"] for key, values in val.items()}

    learner.mapper.train()
    # Task i of training is a function of (seed, i), so resuming needs no sampler state.
    meta_train(MetaTraining(learner.mapper, optimizer, compute_gradients, validate, score="query_loss",
                            higher_is_better=False, divergence_hint="lower task.maml.inner_lr?"),
               cfg, run_dir, logger)
    return learner
