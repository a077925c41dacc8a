"""`prepare folder`: your own ImageFolder tree (folder, zip or tar) as a mode; splits, determinism, bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kml.data import folder, store
from kml.data.__main__ import main
from kml.data.benchmark import make_sampler
from kml.data.errors import DataError
from kml.data.sampler import SplitDataset
from tests import archives

CLASSES = [f"class{k:02d}" for k in range(40)]  # the default 0.7,0.15,0.15 split: 28/6/6, at least 5 each


def grey_png(level: int, size: tuple[int, int] = (12, 12)) -> bytes:
    return archives.encode(np.full((size[1], size[0], 3), level, dtype=np.uint8), "PNG")


def tree(classes=CLASSES, per_class=3, prefix="") -> dict[str, bytes]:
    """name -> PNG; every image of class k is grey level 5k, so prepared rows trace back to their class."""
    return {f"{prefix}{c}/{i}.png": grey_png(5 * CLASSES.index(c)) for c in classes for i in range(per_class)}


def materialise(files: dict[str, bytes], path, kind: str):
    """The same files as a folder, a zip (members in reverse order: never filesystem order) or a tar.gz."""
    if kind == "zip":
        return archives.write_zip(path.with_suffix(".zip"), dict(reversed(files.items())))
    if kind == "tar":
        return archives.write_tar_gz(path.with_suffix(".tar.gz"), files)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def classes_of(root, name, size=8) -> dict[str, list[str]]:
    folder_ = store.prepared_dir(root, name, size)
    return {s: json.loads((folder_ / f"{s}_classes.json").read_text()) for s in store.SPLITS}


def check_rows_follow_classes(root, name, size=8):
    for split, names in classes_of(root, name, size).items():
        data = SplitDataset.load(root, name, size, split)
        means = data.images.float().mean(dim=(1, 2, 3))
        expected = np.repeat([5 * CLASSES.index(c) for c in names], data.counts.numpy())
        assert np.abs(means.numpy() - expected).max() < 1


# ---- splits -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_ratio_split_is_the_same_from_any_source_kind(kind, tmp_path):
    reference = tmp_path / "reference"
    folder.prepare("scans", materialise(tree(), tmp_path / "tree_folder", "folder"), reference, image_size=8)
    source = materialise(tree(prefix="my_scans/"), tmp_path / "tree", kind)  # one wrapping top folder
    folder.prepare("scans", source, tmp_path / "root", image_size=8)
    split = classes_of(tmp_path / "root", "scans")
    assert split == classes_of(reference, "scans")
    assert [len(split[s]) for s in store.SPLITS] == [28, 6, 6]
    assert sorted(sum(split.values(), [])) == CLASSES
    manifest = store.load_manifest(tmp_path / "root", "scans", 8)
    assert manifest["split"] == {"rule": "--split 0.7,0.15,0.15 --split-seed 0", "classes": split}
    assert (manifest["channels"], manifest["rotate_classes"]) == (3, False)
    check_rows_follow_classes(tmp_path / "root", "scans")


def test_same_command_same_split_and_the_seed_changes_it(tmp_path):
    source = materialise(tree(), tmp_path / "tree", "folder")
    folder.prepare("scans", source, tmp_path / "a", image_size=8, split="0.5,0.25,0.25", split_seed=3)
    folder.prepare("scans", source, tmp_path / "b", image_size=8, split="0.5,0.25,0.25", split_seed=3)
    folder.prepare("scans", source, tmp_path / "c", image_size=8, split="0.5,0.25,0.25", split_seed=4)
    assert classes_of(tmp_path / "a", "scans") == classes_of(tmp_path / "b", "scans")
    assert classes_of(tmp_path / "a", "scans") != classes_of(tmp_path / "c", "scans")
    assert [len(c) for c in classes_of(tmp_path / "a", "scans").values()] == [20, 10, 10]
    folder.prepare("scans", source, tmp_path / "a", image_size=8, split="0.5,0.25,0.25", split_seed=3, force=True)
    assert classes_of(tmp_path / "a", "scans") == classes_of(tmp_path / "b", "scans")


def test_split_file_keeps_its_lists_and_leaves_unlisted_classes_out(tmp_path, capsys):
    lists = {"train": CLASSES[10:20][::-1], "val": CLASSES[:5], "test": CLASSES[30:35]}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(lists))
    folder.prepare("scans", materialise(tree(), tmp_path / "tree", "folder"), tmp_path / "root", image_size=8,
                   split_file=split_file)
    assert classes_of(tmp_path / "root", "scans") == lists  # the file's order, not sorted
    assert "20 classes of the source are in no list" in capsys.readouterr().err
    assert store.load_manifest(tmp_path / "root", "scans", 8)["split"]["rule"] == f"--split-file {split_file}"
    check_rows_follow_classes(tmp_path / "root", "scans")


def test_train_val_test_folders_are_taken_as_given(tmp_path):
    given = {"train": CLASSES[:7], "val": CLASSES[7:13], "test": CLASSES[13:18]}
    files = {name: data for split, names in given.items() for name, data in tree(names, prefix=f"{split}/").items()}
    folder.prepare("scans", materialise(files, tmp_path / "tree", "zip"), tmp_path / "root", image_size=8)
    assert classes_of(tmp_path / "root", "scans") == given
    assert store.load_manifest(tmp_path / "root", "scans", 8)["split"]["rule"] == "as given by the train/val/test folders"
    check_rows_follow_classes(tmp_path / "root", "scans")


def test_grey_images_rotation_and_the_cli(tmp_path, capsys):
    source = materialise(tree(), tmp_path / "tree", "tar")
    assert main(["prepare", "folder", "--name", "scans", "--source", str(source), "--root", str(tmp_path),
                 "--image-size", "10", "--channels", "1", "--rotate-classes", "--split-seed", "0"]) == 0
    manifest = store.load_manifest(tmp_path, "scans", 10)
    assert (manifest["channels"], manifest["rotate_classes"]) == (1, True)
    data = SplitDataset.load(tmp_path, "scans", 10, "test")
    assert data.images.shape[1:] == (1, 10, 10) and data.rotate_classes
    assert make_sampler(["scans"], "test", 5, 1, 1, 1, root=tmp_path, image_size=10).samplers[0].rotate
    assert main(["prepare", "folder", "--name", "scans", "--source", str(source), "--root", str(tmp_path),
                 "--image-size", "10"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # A manifest from before rotate_classes was recorded: a dataset without a registry entry is not rotated.
    path = store.prepared_dir(tmp_path, "scans", 10) / "manifest.json"
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "rotate_classes"}))
    assert not SplitDataset.load(tmp_path, "scans", 10, "test").rotate_classes


def test_a_folder_mode_missing_or_damaged_names_its_prepare_command(tmp_path):
    folder.prepare("scans", materialise(tree(), tmp_path / "tree", "folder"), tmp_path, image_size=8)
    with pytest.raises(DataError, match=r"scans at 16px is not prepared .*\(only at 8px: or set image_size to that\)"
                                        r".*`python -m kml\.data prepare folder --name scans --source DIR .*--image-size 16`"):
        SplitDataset.load(tmp_path, "scans", 16, "train")
    array = store.prepared_dir(tmp_path, "scans", 8) / "val.npy"
    array.write_bytes(array.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"val.npy is damaged .*cut short.*prepare it again: "
                                        r"`python -m kml\.data prepare folder --name scans --source DIR .* --force`"):
        SplitDataset.load(tmp_path, "scans", 8, "val")


# ---- warnings: prepared anyway ----------------------------------------------------------------------

def test_mixed_sizes_and_small_classes_are_warnings(tmp_path, capsys):
    files = tree()
    files["class00/big.png"] = grey_png(0, size=(30, 20))
    folder.prepare("scans", materialise(files, tmp_path / "tree", "folder"), tmp_path, image_size=8)
    err = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.startswith("warning:")]  # no bars
    assert "warning: the images come in 2 sizes (e.g. 12×12, 30×20); all are resized to 8×8" in err[0]
    assert err[1].startswith("warning: 40 classes have fewer than 16 images") and "smallest: 'class01' with 3" in err[1]
    assert "at most 2" in err[1] and len(err) == 2
    assert sum(store.load_manifest(tmp_path, "scans", 8)["splits"][s]["images"] for s in store.SPLITS) == 121


def test_unreadable_images_are_counted_named_and_skippable(tmp_path, capsys):
    files = tree()
    for k in range(5):
        files[f"class{k:02d}/broken{k}.png"] = b"not a png"
    source = materialise(files, tmp_path / "tree", "zip")
    with pytest.raises(DataError, match=r"^5 of the 125 images cannot be read as images \(class00/broken0\.png, "
                                        r"class01/broken1\.png, class02/broken2\.png, …\); .*--skip-unreadable"):
        folder.prepare("scans", source, tmp_path / "root", image_size=8)
    assert not (tmp_path / "root").exists()
    folder.prepare("scans", source, tmp_path / "root", image_size=8, skip_unreadable=True)
    assert "warning: leaving out 5 unreadable images" in capsys.readouterr().err
    assert sum(store.load_manifest(tmp_path / "root", "scans", 8)["splits"][s]["images"] for s in store.SPLITS) == 120


# ---- bad input: one line that says what to do, nothing written --------------------------------------

class SplitFile(str):
    """A --split-file's text, as a bad input."""


BAD_INPUTS = {
    "no class folders": (lambda tmp: {"a.png": grey_png(1), "b.png": grey_png(2)}, {},
                         r"holds no class folders with images; arrange it as <class>/<image>"),
    "no images at all": (lambda tmp: {"notes/readme.txt": b"hello"}, {}, r"holds no class folders"),
    "split folders beside class folders": (lambda tmp: {**tree(CLASSES[:3], prefix="train/"), **tree(CLASSES[3:6])},
                                           {}, r"split folders train beside or without .*class03.*; arrange it"),
    "a class in two splits": (lambda tmp: {**tree(CLASSES[:6], prefix="train/"), **tree(CLASSES[5:11], prefix="val/"),
                                           **tree(CLASSES[11:17], prefix="test/")}, {},
                              r"class 'class05' is in more than one of train/val/test .*disjoint"),
    "split beside given folders": (lambda tmp: {n: d for k, s in enumerate(store.SPLITS)
                                                for n, d in tree(CLASSES[5 * k:5 * k + 5], prefix=f"{s}/").items()},
                                   {"split": "0.5,0.25,0.25"}, r"train/val/test folders, which fix the split"),
    "too few classes": (lambda tmp: tree(CLASSES[:20]), {},
                        r"scans has too few classes for 5-way episodes \(val 3, test 3\); add classes.*--min-classes N"),
    "split not three fractions": (lambda tmp: tree(), {"split": "0.8,0.2"}, r"--split 0.8,0.2 must be three fractions"),
    "split not summing to 1": (lambda tmp: tree(), {"split": "0.7,0.2,0.2"}, r"sum to 1, e.g. --split 0.7,0.15,0.15"),
    "split and split file": (lambda tmp: tree(), {"split": "0.7,0.15,0.15", "split_file": "x.json"},
                             r"--split and --split-file both choose the split"),
    "split file not json": (lambda tmp: tree(), SplitFile("{train: ["), r"cannot be read as JSON .*write \{\"train\""),
    "split file without val": (lambda tmp: tree(), SplitFile(json.dumps({"train": CLASSES[:5], "test": CLASSES[5:10]})),
                               r"is not an object of three class lists"),
    "split file naming absent classes": (lambda tmp: tree(), SplitFile('{"train": ["cat"], "val": [], "test": []}'),
                                         r"names 1 classes that have no folder in the source \(e.g. 'cat'\)"),
    "split file naming a class twice": (lambda tmp: tree(),
                                        SplitFile(json.dumps({"train": CLASSES[:5], "val": CLASSES[4:9], "test": []})),
                                        r"names 1 classes more than once \(e.g. 'class04'\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_clear_line(case, tmp_path):
    make_files, options, message = BAD_INPUTS[case]
    if isinstance(options, SplitFile):
        (tmp_path / "split.json").write_text(options)
        options = {"split_file": tmp_path / "split.json"}
    source = materialise(make_files(tmp_path), tmp_path / "tree", "folder")
    with pytest.raises(DataError, match=message) as caught:
        folder.prepare("scans", source, tmp_path / "root", image_size=8, **options)
    assert "\n" not in str(caught.value) and not (tmp_path / "root").exists()


@pytest.mark.parametrize("name, message", [
    ("omniglot", r"--name 'omniglot' is a built-in dataset .*choose another name"),
    ("synthetic_glyphs", r"is a built-in dataset"),
    ("my scans", r"must be letters, digits, _ and -"),
    (None, r"prepare folder needs --name NAME"),
])
def test_names_that_cannot_be_a_mode_are_refused(name, message, tmp_path):
    with pytest.raises(DataError, match=message):
        folder.prepare(name, tmp_path, tmp_path / "root", image_size=8)


@pytest.mark.parametrize("argv, message", [
    (["prepare", "cub", "--name", "x"], "error: --name is only for prepare folder; drop it"),
    (["prepare", "folder", "--name", "x", "--source", ".", "--allow-missing-classes"],
     "error: --allow-missing-classes is only for built-in datasets; drop it"),
    (["prepare", "folder", "--name", "x"], "error: prepare folder needs --source DIR|ARCHIVE"),
    (["prepare", "folder", "--name", "x", "--source", ".", "--channels", "2"], "error: --channels must be 1"),
])
def test_cli_options_of_the_other_kind_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main([*argv, "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
