"""The GPU check's summary: summary.json (everything, for tools) and summary.md (for people), both rewritten
after every step so that a call cut off still returns one; logs.tar.gz with every file of the output
folder; the copy of those to the device call's $OUT (--mirror). Standard library only: it runs in the
parent process of the check, which imports nothing that the install step may have to provide."""

from __future__ import annotations

import json
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

MIRRORED = ("summary.md", "summary.json", "logs.tar.gz", "speed.png", "real.png")  # at most 8 files come back


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> dict | None:
    """Counts and failed test ids of a pytest --junitxml report (written only when pytest ends)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                              if case.find("failure") is not None or case.find("error") is not None]
    return counts


def fmt(value, pattern: str = "{:.1f}", missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def render(summary: dict) -> str:
    """summary.md: the machine, each step's status, and each step's figures."""
    machine, steps = summary["machine"], {s["name"]: s for s in summary["steps"]}
    lines = [f"# kml GPU check, {summary['finished'] or summary['started']}", "",
             f"`{summary['command']}`", "", "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    lines += ["", "| step | status | limit s | took s | ran |", "|---|---|---:|---:|---|"]
    for step in summary["steps"]:
        lines.append(f"| {step['title']} | **{step['status']}** | {fmt(step.get('limit_s'), '{:.0f}')} | "
                     f"{fmt(step.get('seconds'), '{:.0f}')} | {step.get('started') or '-'} |")
    env = (steps.get("env") or {}).get("results") or {}
    ceilings = env.get("ceilings_tflops", {})
    lines += ["", "## 1. Environment", ""]
    if env:
        lines += [", ".join(f"{key} {value}" for key, value in env.get("facts", {}).items()), "",
                  "Matmul ceiling (TFLOP/s, n×n×n with n = " + str(env.get("matmul_size")) + "): " +
                  ", ".join(f"{p} {fmt(v, '{:.1f}', 'n/a')}" for p, v in ceilings.items())]
    lines += ["", "## 2. Correctness on the device", ""]
    counts = (steps.get("correctness") or {}).get("results")
    if counts:
        lines.append(f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
                     f"{counts['skipped']} skipped (`pytest -m 'cuda or device' --kml-device`)")
        lines += [f"- FAILED {test}" for test in counts["failed_tests"]]
    lines += ["", "## 3. Speed (ms per meta-iteration, median)", ""] + speed_lines(steps.get("speed"), ceilings)
    lines += ["", "## 4. Real run", ""] + real_lines((steps.get("real") or {}).get("results"))
    lines += ["", "Logs of every step: logs.tar.gz (`tar xzf logs.tar.gz`), each step's `<step>.log` and "
              "`<step>.json`; BENCHMARKS.md, section GPU check, says how to read them."]
    return "\n".join(lines) + "\n"


def speed_lines(step: dict | None, ceilings: dict) -> list[str]:
    record = (step or {}).get("results")
    if not record or not record.get("variants"):
        return ["no results"]
    rows = {(row["method"], row["path"]): row for row in record["variants"][0]["rows"]}
    lines = [f"`higher`: {record.get('higher')}. x higher = the `higher` row's ms / this row's (MAML); "
             "x default = the default switches' batched ms / this row's. Fractions: achieved FLOP/s over the "
             "ceilings of step 1 (convolutions run as TF32 by default on a GPU, bf16 under autocast).", "",
             "| switches | method | path | ms | x higher | x default | peak MB | TFLOP/s | of fp32 | of TF32 | of bf16 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in record["variants"]:
        if variant.get("error"):
            lines.append(f"| {variant['name']} | error: {variant['error']} | | | | | | | | | |")
        for row in variant["rows"]:
            reference = rows.get((row["method"], "higher"))
            default = rows.get((row["method"], "batched"))
            tflops = row["flops_per_s"] / 1e12
            fractions = [fmt(tflops / c if c else None, "{:.0%}") for c in
                         (ceilings.get("fp32"), ceilings.get("tf32"), ceilings.get("bf16"))]
            lines.append(
                f"| {variant['name']} | {row['method']} | {row['path']} | {row['ms']:.1f} | "
                f"{fmt(reference['ms'] / row['ms'] if reference and row['path'] != 'higher' else None, '{:.2f}x')} | "
                f"{fmt(default['ms'] / row['ms'] if default and row['path'] == 'batched' else None, '{:.2f}x')} | "
                f"{row['peak_mb']:.0f} | {tflops:.2f} | " + " | ".join(fractions) + " |")
    return lines


def real_lines(record: dict | None) -> list[str]:
    if not record:
        return ["no results"]
    lines = [f"Data: {record['data']}", ""]
    if record.get("prepare_s"):
        lines.append("Prepared at " + f"{record['image_size']} px in " +
                     ", ".join(f"{name} {seconds:.0f} s" for name, seconds in record["prepare_s"].items()))
    probe = record.get("probe")
    if probe:
        lines.append(f"Probe (median of {probe['iterations']}): {probe['with_data_ms']:.1f} ms per iteration with "
                     f"the sampler, {probe['without_data_ms']:.1f} ms without (one batch kept on the device), "
                     f"sampling alone {probe['sampling_ms']:.1f} ms: the sampler's share of an iteration "
                     f"{probe['sampler_share']:.0%}; peak {fmt(probe.get('peak_gpu_mb'), '{:.0f}')} MB; "
                     f"evaluation {probe['eval_ms_per_task']:.1f} ms per task")
    run, plan = record.get("run") or {}, record.get("plan") or {}
    if plan:
        lines.append(f"Run: {plan['iterations']} iterations planned, {run.get('iterations_done', 0)} done "
                     f"({'finished' if run.get('finished') else 'NOT finished'}, {fmt(run.get('seconds'), '{:.0f}')} s), "
                     f"{fmt(run.get('loop_ms_per_iteration'))} ms per iteration in the training loop (with data)")
    test = run.get("test")
    if test:
        overall = test["overall"]
        lines.append(f"Test ({overall['n']} tasks): {100 * overall['mean']:.2f} ± {100 * overall['ci95']:.2f}% "
                     "overall; " + ", ".join(f"{mode} {100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}%"
                                             for mode, r in test["per_mode"].items()))
    return lines


def write(out: Path, summary: dict, mirror: Path | None) -> None:
    """summary.json, summary.md, logs.tar.gz (every other file of `out`), and their copies in `mirror`."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(render(summary))
    partial = out / "logs.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(out.iterdir()):
            if path.is_file() and not path.name.startswith("logs.tar.gz"):
                tar.add(path, arcname=path.name)
    partial.replace(out / "logs.tar.gz")
    if mirror is not None:
        mirror.mkdir(parents=True, exist_ok=True)
        for name in MIRRORED:
            if (out / name).is_file():
                shutil.copyfile(out / name, mirror / name)
