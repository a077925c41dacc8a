"""Your own data as modes, end to end through launch.py: a custom benchmark and its specialists in the report,
and a new built-in dataset added as one module plus one YAML (CONTRIBUTING.md, "Adding a dataset")."""
from __future__ import annotations

import json

import numpy as np

from kml.analysis import report
from kml.data import folder, store
from tests import archives
from tests.runs import TINY_SIZE, launch, repo_copy, run_in, tiny_overrides

# 5 classes per split (the default way) of shot 1 + query 5 images (tiny_overrides' episodes).
CLASSES, IMAGES = 25, 6


def own_tree(path, colour):
    """A folder of CLASSES class folders whose images are `colour(class)` plus noise."""
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (path / f"kind{k:02d}").mkdir(parents=True)
        for i in range(IMAGES):
            pixels = np.clip(np.array(colour(k)) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            (path / f"kind{k:02d}" / f"{i}.png").write_bytes(archives.encode(pixels, "PNG"))
    return path


def test_custom_two_mode_benchmark_trains_and_the_report_combines_its_specialists(tmp_path):
    root = tmp_path / "data"
    for name, colour in (("greys", lambda k: (10 * k,) * 3), ("colours", archives.colour_of)):
        folder.prepare(name, own_tree(tmp_path / name, colour), root, image_size=TINY_SIZE, split="0.6,0.2,0.2")
    sweep = tmp_path / "sweep"
    done = launch(["-m", "benchmark=custom", "benchmark.modes=[greys,colours],[greys],[colours]",
                   *tiny_overrides(root), f"hydra.sweep.dir={sweep}"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    assert sorted(tuple(r["per_mode"]) for r in results) == [("colours",), ("greys",), ("greys", "colours")]
    assert {(r["benchmark"], r["method"]) for r in results} == {("custom", "ProtoNet")}
    header, rows, _ = report.build_table(report.find_results([str(sweep)]), published=False)
    assert header == ["method", "greys+colours 5w1s", "colours 5w1s", "greys 5w1s"]
    table = {row[0]: row[1:] for row in rows}
    specialists = {m: s for r in results if len(r["per_mode"]) == 1 for m, s in r["per_mode"].items()}
    multi = report.multi_rows(report.find_results([str(sweep)]))
    assert len(multi) == 1 and multi[0]["per_mode"] == {"greys": specialists["greys"], "colours": specialists["colours"]}
    assert table["Multi-ProtoNet"][0] == f"{100 * multi[0]['overall']['mean']:.2f} ± {100 * multi[0]['overall']['ci95']:.2f}"
    assert all(table["ProtoNet"]) and table["Multi-ProtoNet"][1:] == ["", ""]


TOY_MODULE = '''"""Toy: a zip of toy/<class>-<n>.png with fixed class lists (the registry test's dataset)."""
from collections import defaultdict

from kml.data.prepare import split_by_lists

CHANNELS = 1
DOWNLOADS = []
LISTS = {split: [f"c{6 * s + k:02d}" for k in range(6)] for s, split in enumerate(("train", "val", "test"))}


def classes(source):
    found = defaultdict(list)
    for name in source.names():
        found[name.rsplit("/", 1)[-1].split("-")[0]].append(name)
    return split_by_lists("toy", found, source, lists=LISTS)
'''
TOY_YAML = "_target_: kml.data.toy\nrotate_classes: true\n"


def test_adding_a_dataset_is_one_module_and_one_yaml(tmp_path):
    copy = repo_copy(tmp_path / "repo")  # the project as it is, plus the two new files and nothing else
    (copy / "kml" / "data" / "toy.py").write_text(TOY_MODULE)
    (copy / "conf" / "dataset" / "toy.yaml").write_text(TOY_YAML)
    png = archives.omniglot_drawing()  # the last class of each split's list is missing: a partial copy
    source = archives.write_zip(tmp_path / "toy.zip", {f"toy/c{6 * s + k:02d}-{i}.png": png for s in range(3)
                                                       for k in range(5) for i in range(IMAGES)})
    root = tmp_path / "data"

    def prepare(*options):
        return run_in(copy, ["-m", "kml.data", "prepare", "toy", "--source", str(source), "--root", str(root),
                             "--image-size", str(TINY_SIZE), *options])
    refused = prepare()
    assert refused.returncode == 2 and "lacks 3 of the 18 toy classes" in refused.stderr
    prepared = prepare("--allow-missing-classes")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    manifest = store.load_manifest(root, "toy", TINY_SIZE)
    assert (manifest["channels"], manifest["rotate_classes"]) == (1, True)
    assert {s: manifest["splits"][s]["classes"] for s in store.SPLITS} == {"train": 5, "val": 5, "test": 5}
    run_dir = tmp_path / "run"
    trained = run_in(copy, ["launch.py", "benchmark=custom", "benchmark.modes=[toy]", *tiny_overrides(root),
                            f"hydra.run.dir={run_dir}"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["per_mode"]) == ["toy"] and 0 <= results["overall"]["mean"] <= 1
