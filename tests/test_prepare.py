"""Preparation of the real datasets: full Omniglot and a real mini-ImageNet subset from ../shared/data,
and generated archives in the official layouts of the others; idempotence, atomicity, clear errors."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from kml.data import cub, miniimagenet, sources, store
from kml.data.__main__ import main
from kml.data.benchmark import Serving, load_split
from kml.data.errors import DataError
from kml.data.prepare import prepare
from kml.data.sampler import SplitDataset
from tests import archives


def check_prepared(root, name, size, channels, classes, per_class):
    """Shapes, grouped labels, class lists, manifest counts and hashes, memory-mapping; returns the arrays."""
    folder, manifest = store.prepared_dir(root, name, size), store.load_manifest(root, name, size)
    assert (manifest["dataset"], manifest["image_size"], manifest["channels"]) == (name, size, channels)
    arrays = {}
    for split, count in classes.items():
        images = np.load(folder / f"{split}.npy", mmap_mode="r")
        labels = np.load(folder / f"{split}_labels.npy", mmap_mode="r")
        assert isinstance(images, np.memmap) and images.dtype == np.uint8
        assert images.shape == (count * per_class, channels, size, size)
        assert np.array_equal(labels, np.repeat(np.arange(count), per_class))
        assert len(json.loads((folder / f"{split}_classes.json").read_text())) == count
        entry = manifest["splits"][split]
        assert (entry["images"], entry["classes"]) == (count * per_class, count)
        assert entry["images_sha256"] == hashlib.sha256((folder / f"{split}.npy").read_bytes()).hexdigest()
        assert entry["labels_sha256"] == hashlib.sha256((folder / f"{split}_labels.npy").read_bytes()).hexdigest()
        arrays[split] = images
    return arrays


def class_names(root, name, size, split):
    return json.loads((store.prepared_dir(root, name, size) / f"{split}_classes.json").read_text())


# ---- real data ------------------------------------------------------------------------------------

def test_real_omniglot_1623_characters_split_1100_100_423(prepared_omniglot, real_image_size):
    size = real_image_size
    arrays = check_prepared(prepared_omniglot, "omniglot", size, 1, {"train": 1100, "val": 100, "test": 423}, 20)
    names = [c for split in ("train", "val", "test") for c in class_names(prepared_omniglot, "omniglot", size, split)]
    assert names == sorted(names) and len(set(names)) == 1623 and names[0] == "Alphabet_of_the_Magi/character01"
    # inverted: mostly dark paper, bright strokes
    assert arrays["test"].mean() < 60 and arrays["test"].max() == 255


def test_real_miniimagenet_subset_lands_in_the_ravi_splits(prepared_miniimagenet, real_image_size, shared_data,
                                                           capsys):
    source = shared_data / "miniimagenet_subset" / "tinyimagenet64_miniclasses.tar.gz"
    with tarfile.open(source) as tar:
        stated = tar.extractfile("./mini_imagenet_ravi_split_of_these_classes.csv").read().decode()
    expected = {"train": [], "val": [], "test": []}
    for row in csv.DictReader(io.StringIO(stated)):
        expected[row["ravi_split"]].append(row["wnid"])
    check_prepared(prepared_miniimagenet, "miniimagenet", real_image_size, 3, {"train": 14, "val": 6, "test": 5}, 500)
    for split, wnids in expected.items():
        assert class_names(prepared_miniimagenet, "miniimagenet", real_image_size, split) == sorted(wnids)
    miniimagenet.classes(sources.open_source(source))
    assert "warning: 75 of the 100 miniimagenet classes are missing" in capsys.readouterr().err


# ---- generated archives in the official layouts ---------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Build each generated archive once per module, on first use."""
    folder, built = tmp_path_factory.mktemp("archives"), {}
    makers = {"omniglot": (archives.omniglot_zips, "omniglot"), "cub": (archives.cub_tar, "CUB_200_2011.tgz"),
              "aircraft": (archives.aircraft_tar, "fgvc-aircraft-2013b.tar.gz"),
              "fc100": (archives.cifar100_tar, "cifar-100-python.tar.gz"),
              "miniimagenet": (archives.miniimagenet_csv_tar, "mini-imagenet.tar.gz")}

    def get(name):
        if name not in built:
            make, file_name = makers[name]
            built[name] = make(folder / file_name)
        return built[name]
    return get


def test_omniglot_from_the_two_official_zips_is_inverted(generated, tmp_path):
    prepare("omniglot", generated("omniglot"), tmp_path, image_size=20)
    arrays = check_prepared(tmp_path, "omniglot", 20, 1, {"train": 1100, "val": 100, "test": 423}, 2)
    drawing = arrays["val"][0, 0]
    assert (drawing[:, 8:12] == 255).all() and (drawing[:, :8] == 0).all()  # stroke bright, paper dark
    # conf/dataset/omniglot.yaml's rotate_classes reaches the manifest, and the sampler through it.
    path = store.prepared_dir(tmp_path, "omniglot", 20) / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["rotate_classes"] is True and SplitDataset.load(tmp_path, "omniglot", 20, "val").rotate_classes
    del manifest["rotate_classes"]  # as written before the fact was recorded: the registry entry still says so
    path.write_text(json.dumps(manifest))
    assert SplitDataset.load(tmp_path, "omniglot", 20, "val").rotate_classes
    assert load_split(["omniglot"], "train", tmp_path, 20, Serving(class_split="released"))[0].rotate_classes  # regrouped too


def test_miniimagenet_csv_layout_takes_splits_from_the_class_lists(generated, tmp_path, capsys):
    prepare("miniimagenet", generated("miniimagenet"), tmp_path, image_size=16)
    arrays = check_prepared(tmp_path, "miniimagenet", 16, 3, {"train": 64, "val": 16, "test": 20}, 2)
    assert "outside the Ravi train split" in capsys.readouterr().err
    order = archives.all_classes("miniimagenet")
    for split, images in arrays.items():
        colours = [archives.colour_of(order.index(w)) for w in class_names(tmp_path, "miniimagenet", 16, split)]
        assert np.abs(images[::2].mean(axis=(2, 3)) - np.array(colours)).max() < 8


def test_fc100_groups_classes_by_superclass_and_keeps_pixels(generated, tmp_path):
    prepare("fc100", generated("fc100"), tmp_path, image_size=32)
    arrays = check_prepared(tmp_path, "fc100", 32, 3, {"train": 60, "val": 20, "test": 20}, 3)
    coarse = sorted(archives.all_classes("fc100"))
    for split, images in arrays.items():
        names = class_names(tmp_path, "fc100", 32, split)
        assert {n.split("/")[0] for n in names} == set(archives.SPLITS["fc100"][split])
        fine = [coarse.index(n.split("/")[0]) * 5 + int(n[-1]) for n in names]  # the generator's pixel value
        assert np.array_equal(images, np.repeat(np.array(fine, dtype=np.uint8), 3)[:, None, None, None]
                              * np.ones((1, 3, 32, 32), dtype=np.uint8))
    prepare("fc100", generated("fc100"), tmp_path, image_size=20)
    check_prepared(tmp_path, "fc100", 20, 3, {"train": 60, "val": 20, "test": 20}, 3)


def test_cub_split_140_30_30(generated, tmp_path):
    prepare("cub", generated("cub"), tmp_path, image_size=16)
    arrays = check_prepared(tmp_path, "cub", 16, 3, {"train": 140, "val": 30, "test": 30}, 2)
    assert class_names(tmp_path, "cub", 16, "test") == archives.SPLITS["cub"]["test"]
    first = [archives.colour_of(int(n[:3]) - 1) for n in class_names(tmp_path, "cub", 16, "val")]
    assert np.abs(arrays["val"][::2].mean(axis=(2, 3)) - np.array(first)).max() < 8
    manifest = store.load_manifest(tmp_path, "cub", 16)
    assert manifest["source"]["sha256"] == hashlib.sha256(generated("cub").read_bytes()).hexdigest()


def test_aircraft_banner_is_cut_off(generated, tmp_path):
    prepare("aircraft", generated("aircraft"), tmp_path, image_size=32)
    arrays = check_prepared(tmp_path, "aircraft", 32, 3, {"train": 70, "val": 15, "test": 15}, 2)
    for images in arrays.values():
        assert images[:, 0].max() < 40 and images[:, 2].min() > 215  # all sky blue, no red banner


# ---- a partial copy of an official dataset --------------------------------------------------------

def partial_cub(path, train=10, val=6, test=5):
    """A CUB copy holding the first classes of each fixed split (its index files list only those)."""
    kept = {split: archives.SPLITS["cub"][split][:n] for split, n in (("train", train), ("val", val), ("test", test))}
    return archives.cub_tar(path, only={c for names in kept.values() for c in names}), kept


def test_missing_classes_are_refused_unless_allowed(tmp_path, capsys):
    source, kept = partial_cub(tmp_path / "cub_part.tgz")
    with pytest.raises(DataError, match=r"lacks 179 of the 200 cub classes .*present: train 10/140, val 6/30, "
                                        r"test 5/30\); pass the complete official archive, or --allow-missing-classes"):
        prepare("cub", source, tmp_path / "root", image_size=8)
    assert not (tmp_path / "root").exists()
    assert main(["prepare", "cub", "--source", str(source), "--root", str(tmp_path / "root"), "--image-size", "8",
                 "--allow-missing-classes"]) == 0
    err = capsys.readouterr().err
    assert "warning: 179 of the 200 cub classes are missing from " in err
    assert "; preparing the 21 present (train 10/140, val 6/30, test 5/30)" in err
    check_prepared(tmp_path / "root", "cub", 8, 3, {"train": 10, "val": 6, "test": 5}, 2)
    for split, names in kept.items():  # in the order of the fixed lists
        assert class_names(tmp_path / "root", "cub", 8, split) == names


def test_a_partial_split_too_small_for_an_episode_is_refused(tmp_path):
    source, _ = partial_cub(tmp_path / "cub_part.tgz", val=4, test=0)
    with pytest.raises(DataError, match=r"cub_part.tgz holds too few classes for 5-way episodes \(val 4, test 0\); "
                                        r"pass a more complete archive, or pass --min-classes N") as caught:
        prepare("cub", source, tmp_path / "root", image_size=8, allow_missing_classes=True)
    assert "\n" not in str(caught.value) and not (tmp_path / "root").exists()
    source, _ = partial_cub(tmp_path / "cub_part.tgz", val=4, test=4)
    prepare("cub", source, tmp_path / "root", image_size=8, allow_missing_classes=True, min_classes=4)
    check_prepared(tmp_path / "root", "cub", 8, 3, {"train": 10, "val": 4, "test": 4}, 2)


# ---- idempotence and atomicity ---------------------------------------------------------------------

def test_preparing_twice_is_a_no_op(generated, tmp_path, capsys):
    assert main(["prepare", "cub", "--source", str(generated("cub")), "--root", str(tmp_path), "--image-size", "8"]) == 0
    folder = store.prepared_dir(tmp_path, "cub", 8)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["prepare", "cub", "--source", str(generated("cub")), "--root", str(tmp_path), "--image-size", "8"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    prepare("cub", generated("cub"), tmp_path, image_size=8, force=True)
    assert store.load_manifest(tmp_path, "cub", 8)["splits"]["train"]["images"] == 280


@pytest.mark.parametrize("interruption", [RuntimeError("decoder crashed"), KeyboardInterrupt()])
def test_interrupted_preparation_leaves_nothing_behind(generated, tmp_path, monkeypatch, interruption):
    calls, temp_folders = [], []

    def failing_decode(data, name):
        calls.append(name)
        if len(calls) > 50:
            temp_folders.extend(tmp_path.glob("aircraft/.8px.tmp-*"))
            raise interruption
        return real_decode(data, name)
    real_decode = store.decode
    monkeypatch.setattr(store, "decode", failing_decode)
    with pytest.raises(type(interruption)):
        prepare("aircraft", generated("aircraft"), tmp_path, image_size=8)
    assert len(calls) == 51 and len(temp_folders) == 1 and list(tmp_path.iterdir()) == []


# ---- bad input: one line that says what is wrong and what to do ------------------------------------

def corrupted_zip_pair(folder, tmp):
    """Both Omniglot zips, the second damaged inside a member: found while reading, mid-preparation."""
    (tmp / "images_background.zip").write_bytes((folder / "images_background.zip").read_bytes())
    archives.damaged(folder / "images_evaluation.zip", tmp / "images_evaluation.zip", "corrupted")
    return tmp


def text_file(path):
    path.write_text("not a dataset\n")
    return path


def corrupt_pickle_archive(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return print, ("this must never run",)
    return archives.cifar100_tar(tmp_path / "cifar-100-python.tar.gz", meta_extra=RunsCode())


BAD_INPUTS = {
    "missing path": ("cub", lambda generated, tmp: tmp / "CUB_200_2011.tgz", r"does not exist.*--source"),
    "truncated tar.gz": ("cub", lambda generated, tmp: archives.damaged(generated("cub"), tmp / "c.tgz", "truncated"),
                         r"truncated or corrupted.*download it again"),
    "corrupted tar.gz": ("aircraft", lambda generated, tmp: archives.damaged(generated("aircraft"), tmp / "a.tar.gz", "corrupted"),
                         r"truncated or corrupted.*download it again"),
    "truncated zip": ("omniglot", lambda generated, tmp: archives.damaged(
        generated("omniglot") / "images_background.zip", tmp / "images_background.zip", "truncated"), r"truncated or corrupted"),
    "corrupted zip": ("omniglot", lambda generated, tmp: corrupted_zip_pair(generated("omniglot"), tmp),
                      r"images_evaluation.zip is truncated or corrupted.*download it again"),
    "empty folder": ("cub", lambda generated, tmp: tmp, r"does not look like CUB-200-2011.*pass CUB_200_2011.tgz"),
    "random files": ("aircraft", lambda generated, tmp: archives.write_tar_gz(tmp / "x.tar.gz", {"a/b.txt": b"hello"}),
                     r"does not look like FGVC-Aircraft"),
    "not an archive": ("fc100", lambda generated, tmp: text_file(tmp / "notes.txt"),
                       r"not a folder, a .zip or a .tar"),
    "cub as aircraft": ("aircraft", lambda generated, tmp: generated("cub"), r"does not look like FGVC-Aircraft"),
    "aircraft as fc100": ("fc100", lambda generated, tmp: generated("aircraft"), r"does not look like CIFAR-100"),
    "omniglot as miniimagenet": ("miniimagenet", lambda generated, tmp: generated("omniglot"), r"does not look like mini-ImageNet"),
    "one omniglot zip": ("omniglot", lambda generated, tmp: archives.write_zip(tmp / "images_background.zip", {}).parent,
                         r"not images_evaluation.zip.*needs both"),
    "incomplete cub": ("cub", lambda generated, tmp: archives.cub_tar(tmp / "c.tgz", drop_one_image=True),
                       r"no images/.*incomplete"),
    "pickle that runs code": ("fc100", lambda generated, tmp: corrupt_pickle_archive(tmp), r"refusing to load .*print.*download"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_clear_line(case, generated, tmp_path, capsys):
    name, make_source, message = BAD_INPUTS[case]
    with pytest.raises(DataError, match=message) as caught:
        prepare(name, make_source(generated, tmp_path), tmp_path / "root", image_size=8)
    assert "\n" not in str(caught.value) and not (tmp_path / "root").exists()
    assert "this must never run" not in capsys.readouterr().out


def test_download_fetches_then_prepares(generated, tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "DOWNLOADS", [generated("cub").as_uri()])  # a local address: no network
    prepare("cub", root=tmp_path, image_size=8, download=True)
    assert (tmp_path / "downloads" / "cub" / "CUB_200_2011.tgz").read_bytes() == generated("cub").read_bytes()
    check_prepared(tmp_path, "cub", 8, 3, {"train": 140, "val": 30, "test": 30}, 2)


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"could not download https://.*CUB_200_2011.tgz.*--source"):
        prepare("cub", root=tmp_path, image_size=8, download=True)
    assert not list((tmp_path / "downloads").rglob("*.part"))
    with pytest.raises(DataError, match="no official download address"):
        prepare("miniimagenet", root=tmp_path, image_size=8, download=True)


def test_cli_exits_2_with_one_error_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "kml.data", "prepare", "cub", "--source", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert main(["prepare", "cub", "--root", str(tmp_path), "--image-size", "0"]) == 2


def test_cli_lists_valid_datasets_for_an_unknown_name(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["prepare", "imagenet"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'imagenet'" in err and all(n in err for n in ("omniglot", "fc100", "aircraft", "folder"))
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of: aircraft, aircraft_banner, cub, "
                                        "fc100, miniimagenet, omniglot$"):
        prepare("imagenet", "anything")
