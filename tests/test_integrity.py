"""Prepared arrays against their manifest (kml/data/integrity.py): a damaged split stops with one line when
opened, and `python -m kml.data verify` reports each dataset OK or DAMAGED."""
import os
import shutil

import numpy as np
import pytest

from kml.data.__main__ import main
from kml.data.errors import DataError
from kml.data.sampler import SplitDataset
from tests.runs import TINY_SIZE, error_line, launch, tiny_overrides


def cut_short(path):
    os.truncate(path, path.stat().st_size - 100)


def too_long(path):
    with open(path, "ab") as f:
        f.write(b"\0" * 100)


def fewer_rows(path):
    np.save(path, np.load(path)[:-1])


def not_an_array(path):
    path.write_bytes(b"half a header")


DAMAGE = {"cut short": (cut_short, "cut short"), "too long": (too_long, "too long"),
          "fewer rows": (fewer_rows, "where the manifest says"), "not an array": (not_an_array, "not a NumPy array"),
          "missing": (os.remove, "missing")}


@pytest.fixture
def copied_root(synthetic_root, tmp_path):
    """A copy of the session's synthetic data, free to damage."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("file", ["val.npy", "val_labels.npy"])
def test_a_damaged_array_stops_with_one_line_when_its_split_opens(copied_root, damage, file):
    apply, problem = DAMAGE[damage]
    folder = copied_root / "synthetic_shapes" / f"{TINY_SIZE}px"
    apply(folder / file)
    SplitDataset.load(copied_root, "synthetic_shapes", TINY_SIZE, "train")  # the other splits still open
    with pytest.raises(DataError) as caught:
        SplitDataset.load(copied_root, "synthetic_shapes", TINY_SIZE, "val")
    message = str(caught.value)
    assert message.startswith(f"{folder / file} is damaged") and problem in message
    assert f"delete {folder}; it is generated again on first use" in message


def test_a_cut_short_manifest_is_damaged_too(copied_root, capsys):
    manifest = copied_root / "synthetic_gratings" / f"{TINY_SIZE}px" / "manifest.json"
    cut_short(manifest)
    with pytest.raises(DataError, match=f"{manifest} is damaged \\(not readable JSON\\)"):
        SplitDataset.load(copied_root, "synthetic_gratings", TINY_SIZE, "train")
    assert main(["verify", "synthetic_gratings", "--root", str(copied_root)]) == 1
    assert "DAMAGED manifest.json (not readable JSON)" in capsys.readouterr().out


def test_a_truncated_array_stops_launch_with_the_prepare_command(synthetic_root, tmp_path):
    # One-channel glyphs stand in for a prepared Omniglot; its test.npy was cut short while being copied.
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic_glyphs" / f"{TINY_SIZE}px", root / "omniglot" / f"{TINY_SIZE}px")
    test = root / "omniglot" / f"{TINY_SIZE}px" / "test.npy"
    cut_short(test)
    done = launch(tiny_overrides(root) + ["benchmark=omniglot", f"hydra.run.dir={tmp_path / 'run'}"])
    line = error_line(done)
    assert f"{test} is damaged" in line and "cut short" in line
    assert f"python -m kml.data prepare omniglot --source PATH --root {root} --image-size {TINY_SIZE} --force" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_verify_passes_intact_data_and_flags_a_flipped_byte(copied_root, capsys):
    assert main(["verify", "--root", str(copied_root)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"synthetic_{mode}/{TINY_SIZE}px: OK"
                                                    for mode in ("glyphs", "gratings", "shapes")]
    # Same size, same header: only the hash can tell.
    images = copied_root / "synthetic_shapes" / f"{TINY_SIZE}px" / "train.npy"
    data = bytearray(images.read_bytes())
    data[len(data) // 2] ^= 1
    images.write_bytes(data)
    SplitDataset.load(copied_root, "synthetic_shapes", TINY_SIZE, "train")
    assert main(["verify", "--root", str(copied_root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"synthetic_glyphs/{TINY_SIZE}px: OK" and lines[1] == f"synthetic_gratings/{TINY_SIZE}px: OK"
    assert lines[2].startswith(f"synthetic_shapes/{TINY_SIZE}px: DAMAGED train.npy (sha256 differs")
    assert main(["verify", "synthetic_glyphs", "--root", str(copied_root)]) == 0  # only the named dataset
    assert capsys.readouterr().out.splitlines() == [f"synthetic_glyphs/{TINY_SIZE}px: OK"]


def test_verify_names_what_it_cannot_find(tmp_path, capsys):
    assert main(["verify", "--root", str(tmp_path)]) == 2
    assert "no prepared datasets under" in capsys.readouterr().err
    assert main(["verify", "omniglot", "--root", str(tmp_path)]) == 2
    assert f"omniglot is not prepared under {tmp_path}" in capsys.readouterr().err
