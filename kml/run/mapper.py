"""`python launch.py pipeline=mapper ...`: meta-train the meta-mapper, evaluate it, write results.json.

Same contract as kml.run.train.run: periodic validation keeps best.pt (lowest adapted query loss on held-out
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

from kml.errors import ConfigError
from kml.mapper.encoders import load_lm
from kml.mapper.frozen_lm import FrozenLM
from kml.mapper.maml import MapperMAML
from kml.mapper.mapper import MetaMapper, embedding_scale
from kml.mapper.sources import test_tasks, training_episodes
from kml.run import checkpoint
from kml.run.evaluate import mean_ci, write_results
from kml.run.logger import RunLogger
from kml.run.loop import MetaTraining, meta_train
from kml.run.runtime import TEST_SEED_OFFSET, VAL_SEED_OFFSET, pick_device, seed_everything

PAPER_SETUP = ("clip_vit_b32", "gpt2")


def method_name(cfg: DictConfig) -> str:
    pair = (cfg.vision.name, cfg.lm.name)
    return "MetaMapper" if pair == PAPER_SETUP else f"MetaMapper ({pair[0]}+{pair[1]})"


def logger_tags(cfg: DictConfig) -> list[str]:
    """W&B tags for a mapper run (the classification tags of launch.py do not apply)."""
    return ["mapper", cfg.mapper.train_data, cfg.mapper.eval_data, cfg.vision.name, cfg.lm.name,
            f"{cfg.way}way", f"{cfg.shot}shot", f"{cfg.get('protocol', 'paper')}_protocol"]


def thread_count(cfg: DictConfig) -> int | None:
    """`mapper.threads`; `auto`: SLURM's allotment on a SLURM node (torch would take every core of it), else
    1 for the tiny stand-ins (matrices this small lose more to thread hand-offs than they gain: 150
    iterations took 28 s on 1 thread, 334 s on 2 of a busy 2-core machine), else None: torch's default."""
    setting = cfg.mapper.get("threads", "auto")
    if setting != "auto":
        return None if setting is None else int(setting)
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return 1 if cfg.vision.get("random") and cfg.lm.get("random") else None


def build_learner(cfg: DictConfig, lm: FrozenLM, visual_dim: int) -> MapperMAML:
    spec, maml, clip = cfg.mapper.network, cfg.mapper.maml, cfg.mapper.optimizer.max_grad_norm
    try:
        mapper = MetaMapper(visual_dim, lm.embed_dim, int(spec.prefix_length), int(spec.heads),
                            float(spec.dropout), embedding_scale(lm.model), layout=spec.head_layout,
                            activation=spec.activation, dropout_at_test=bool(spec.dropout_at_test),
                            init=spec.init)
        return MapperMAML(mapper, lm, float(maml.inner_lr), int(maml.train_steps), int(maml.test_steps),
                          bool(maml.first_order), int(maml.query_loss_from_step),
                          None if clip is None else float(clip)).to(lm.device)
    except ValueError as err:
        raise ConfigError(f"{err} (mapper.network, mapper.maml in conf/pipeline/mapper.yaml)") from err


def evaluate(learner: MapperMAML, sampler, count: int, cfg: DictConfig, desc: str,
             predictions: Path | None = None) -> dict[str, list[float]]:
    """Per task of 0..count-1: adapted and 0-step accuracy, name match and exact match, and the adapted
    query loss."""
    out = {"accuracy": [], "accuracy_0step": [], "accuracy_exact": [], "accuracy_0step_exact": [],
           "query_loss": []}
    sink = open(predictions, "w") if predictions else None
    try:
        for index in tqdm(range(count), desc=desc, unit="task", leave=False, mininterval=1.0):
            task = sampler.task(index)
            result = learner.evaluate(task, int(cfg.mapper.max_new_tokens))
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
    if cfg.eval.get("at"):
        raise ConfigError(f"eval.at={list(cfg.eval.at)}: tests at milestones are built for pipeline=fewshot; "
                          "drop eval.at for the meta-mapper")
    device = pick_device(cfg.device)
    threads = thread_count(cfg)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    test, count = test_tasks(cfg, cfg.seed + TEST_SEED_OFFSET, device)  # fails early if the data is missing
    lm = FrozenLM(*load_lm(cfg.lm, device), max_target_tokens=int(cfg.mapper.max_caption_tokens))
    if cfg.eval_only:
        learner = load_for_eval(cfg, lm, test.features.shape[-1])
    else:
        learner = train(cfg, run_dir, logger, lm, device)
    scores = evaluate(learner, test, count, cfg, "test", run_dir / "predictions.jsonl")
    name = cfg.mapper.eval_data
    # `overall` is name match, the figure of the paper's tables (kml/mapper/README.md); `_exact`: whole answer.
    summary = {key: mean_ci(values) for key, values in scores.items()}
    results = {"overall": summary["accuracy"], "per_mode": {name: summary["accuracy"]},
               "overall_0step": summary["accuracy_0step"], "per_mode_0step": {name: summary["accuracy_0step"]},
               "overall_exact": summary["accuracy_exact"], "overall_0step_exact": summary["accuracy_0step_exact"],
               "query_loss": summary["query_loss"], "method": method_name(cfg), "benchmark": name,
               "shot": int(cfg.shot), "way": int(cfg.way), "vision": cfg.vision.name, "lm": cfg.lm.name}
    write_results(run_dir / "results.json", results)
    print(f"\n{results['method']} on {name}, {cfg.way}-way {cfg.shot}-shot, {summary['accuracy']['n']} tasks")
    print(f"{'':<20}{'name match':>14}    {'exact match':>14}")
    for label, key in ((f"adapted ({learner.test_steps} steps)", "accuracy"), ("0 steps", "accuracy_0step")):
        print(f"{label:<20}" + "    ".join(f"{100 * summary[k]['mean']:6.2f} ± {100 * summary[k]['ci95']:5.2f}"
                                           for k in (key, f"{key}_exact")))
    logger.log_table("test/results", ["benchmark", "accuracy", "ci95", "accuracy_0step", "accuracy_exact", "tasks"],
                     [[name, summary["accuracy"]["mean"], summary["accuracy"]["ci95"],
                       summary["accuracy_0step"]["mean"], summary["accuracy_exact"]["mean"], summary["accuracy"]["n"]]])
    logger.summary({f"test/{key}": value["mean"] for key, value in summary.items()} |
                   {f"test/{name}/accuracy": summary["accuracy"]["mean"]})
    return results


def load_for_eval(cfg: DictConfig, lm: FrozenLM, visual_dim: int) -> MapperMAML:
    if not cfg.checkpoint:
        raise ConfigError("eval_only=true needs checkpoint=PATH (a mapper run's best.pt or last.pt)")
    state = checkpoint.load(cfg.checkpoint)
    # The mapper's shape and MAML settings come from the checkpoint; data, LM and protocol from this run.
    saved = OmegaConf.create(state["config"])
    learner = build_learner(OmegaConf.merge(cfg, {"mapper": trained_settings(saved)}), lm, visual_dim)
    try:
        learner.mapper.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ConfigError(f"{cfg.checkpoint} does not fit this vision/lm pair (it was trained with "
                          f"vision={saved.vision.name} lm={saved.lm.name})") from err
    print(f"evaluating {cfg.checkpoint} (iteration {state['iteration']})")
    return learner


def trained_settings(saved: DictConfig) -> dict:
    """The network and MAML settings a checkpoint's config holds. A checkpoint written before the `task`
    group became `pipeline` holds them as task.mapper and task.maml (resolved values, so they still fit):
    trained mappers stay loadable."""
    if "mapper" in saved:
        return {"network": saved.mapper.network, "maml": saved.mapper.maml}
    return {"network": saved.task.mapper, "maml": saved.task.maml}


def train(cfg: DictConfig, run_dir: Path, logger: RunLogger, lm: FrozenLM, device) -> MapperMAML:
    episodes = training_episodes(cfg, "train", int(cfg.train.query), cfg.seed, device)
    validation = training_episodes(cfg, "val", int(cfg.train.query), cfg.seed + VAL_SEED_OFFSET, device)
    learner = build_learner(cfg, lm, episodes.features.shape[-1])
    learner.mapper.set_feature_statistics(episodes.features)
    optimizer = torch.optim.AdamW(learner.mapper.parameters(), lr=float(cfg.mapper.optimizer.lr),
                                  weight_decay=float(cfg.mapper.optimizer.weight_decay))
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
                            higher_is_better=False, divergence_hint="lower mapper.maml.inner_lr?"),
               cfg, run_dir, logger)
    return learner
