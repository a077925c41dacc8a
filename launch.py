"""The Hydra entry point: `python launch.py [overrides]`, `python launch.py -m ...` for sweeps. It composes the
config and runs one job; the other entry points are the `python -m` tools (kml.data, kml.report, kml.study,
kml.bench)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

import kml  # noqa: F401  (registers conf/config.yaml's run-folder resolver, quiets a Hydra warning)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from kml.config import validate
    from kml.errors import UserError
    from kml.registry import locate
    from kml.run.allocator import keep_freed_memory
    from kml.run.logger import RunLogger
    from kml.run.run_lock import RunLock

    hydra_cfg = HydraConfig.get()
    if cfg.keep_freed_memory:
        keep_freed_memory()  # before the runner's modules are imported and allocate
    try:
        validate(cfg)  # a wrong type or an impossible value stops before any work
        run = locate(cfg.pipeline, "pipeline")  # its run(cfg, run_dir, logger) -> results, imported only now
    except UserError as err:
        stop(err, hydra_cfg.mode)

    run_dir = Path(hydra_cfg.runtime.output_dir)
    record = run_record(cfg, hydra_cfg)  # before cfg.data.root is made absolute: the config as composed
    cfg.data.root = to_absolute_path(cfg.data.root)
    choices = hydra_cfg.runtime.choices
    lock, logger, exit_code = RunLock(run_dir), None, 1
    try:
        lock.acquire()  # a second job on this folder stops here, before it writes anything there
        write_run_record(run_dir, record)
        logger = RunLogger(run_dir, mode=cfg.logger.mode, project=cfg.logger.project, entity=cfg.logger.entity,
                           group=cfg.name, name=hydra_cfg.job.override_dirname or "default",
                           tags=[*run_tags(cfg, choices), *cfg.logger.tags],
                           config=OmegaConf.to_container(cfg, resolve=True))
        results = run(cfg, run_dir, logger)
        exit_code = 0
        return results
    except UserError as err:
        stop(err, hydra_cfg.mode)
    finally:
        if logger is not None:
            logger.finish(exit_code)
        lock.release()


def run_record(cfg: DictConfig, hydra_cfg) -> dict[str, str]:
    """The files Hydra would write to `.hydra/` on its own before `main` runs (`hydra.output_subdir` is null in
    conf/config.yaml): written here once the run-folder lock is held, so a second job refused on a busy folder
    leaves the running job's record as it was."""
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task)))}


def write_run_record(run_dir: Path, record: dict[str, str]) -> None:
    from kml.run.safe_write import atomic_write
    for name, text in record.items():
        atomic_write(run_dir / ".hydra" / name, lambda f, text=text: f.write(text.encode()))


def stop(err: Exception, mode: RunMode) -> None:
    """A UserError is fixable from its message alone: one line, no traceback, exit status 2; in a sweep it
    is raised instead, so that Hydra records the failed job and the sweep goes on."""
    print(f"error: {err}", file=sys.stderr)
    if mode == RunMode.MULTIRUN:
        raise err
    sys.exit(2)


def run_tags(cfg: DictConfig, choices) -> list[str]:
    """W&B tags naming a run's method and setup; a mapper run has no benchmark, learner or modulation."""
    if cfg.pipeline.name == "mapper":
        from kml.run.mapper import logger_tags
        return logger_tags(cfg)
    return [cfg.benchmark.name, choices.learner, choices.modulation, f"{cfg.shot}shot"]


def refuse_renamed_task(overrides: list[str]) -> None:
    """The old `task` spelling stops here, with one line naming the new one, before Hydra reads it (Hydra
    would say only that the group or key does not exist)."""
    from kml.config import renamed_task_message
    for override in overrides:
        message = renamed_task_message(override)
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    refuse_renamed_task(sys.argv[1:])
    main()
