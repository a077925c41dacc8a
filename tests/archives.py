"""Tiny archives in exactly the official layouts (real zip / tar.gz / pickle files, real PNG and JPEG
images), so that the dataset preparation is tested end to end without the real downloads."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = json.loads((Path(__file__).resolve().parents[1] / "kml" / "data" / "class_splits.json").read_text())


def all_classes(name: str) -> list[str]:
    return [c for split in ("train", "val", "test") for c in SPLITS[name][split]]


def colour_of(index: int) -> tuple[int, int, int]:
    """A colour per class, far enough apart to survive JPEG, so rows can be traced to classes."""
    return (index * 37) % 256, (index * 91 + 50) % 256, (index * 53 + 100) % 256


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(out, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return out.getvalue()


def solid_jpeg(colour, width=24, height=24) -> bytes:
    return encode(np.full((height, width, 3), colour, dtype=np.uint8), "JPEG")


def write_tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def omniglot_drawing(size=20) -> bytes:
    """A 1-bit drawing as in Omniglot: white paper, one black vertical stroke in columns 8..11."""
    paper = np.full((size, size), 255, dtype=np.uint8)
    paper[:, 8:12] = 0
    return encode(paper, "PNG", mode="1")


def omniglot_zips(folder: Path, drawings=2) -> Path:
    """images_background.zip (964 characters in 30 alphabets) + images_evaluation.zip (659 in 20)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = omniglot_drawing()
    for half, alphabets, characters in (("background", 30, 964), ("evaluation", 20, 659)):
        files = {}
        for k in range(characters):
            alphabet, character = f"{half.title()}_Script_{k % alphabets:02d}", f"character{k // alphabets + 1:02d}"
            for d in range(drawings):
                files[f"images_{half}/{alphabet}/{character}/{k:04d}_{d + 1:02d}.png"] = png
        write_zip(folder / f"images_{half}.zip", files)
    return folder


def miniimagenet_csv_tar(path: Path, per_class=2) -> Path:
    """images/*.jpg + Ravi csv files under mini-imagenet/; every row is put in train.csv on purpose,
    to show that the split comes from the fixed class lists and not from the csv files."""
    files, rows = {}, ["filename,label"]
    for index, wnid in enumerate(all_classes("miniimagenet")):
        for i in range(per_class):
            filename = f"{wnid}{i + 1:08d}.jpg"
            files[f"mini-imagenet/images/{filename}"] = solid_jpeg(colour_of(index), 84, 84)
            rows.append(f"{filename},{wnid}")
    files["mini-imagenet/train.csv"] = "\n".join(rows).encode()
    files["mini-imagenet/val.csv"] = files["mini-imagenet/test.csv"] = b"filename,label\n"
    return write_tar_gz(path, files)


def cifar100_tar(path: Path, train_per_class=2, test_per_class=1, meta_extra=None) -> Path:
    """cifar-100-python/{train,test,meta} pickles; fine class k belongs to superclass k // 5 and each
    image's pixels all equal its fine label, so rows can be traced to classes exactly."""
    coarse = sorted(all_classes("fc100"))
    fine = [f"{coarse[k // 5]}_kind{k % 5}" for k in range(100)]
    files = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [k for k in range(100) for _ in range(per_class)]
        data = np.repeat(np.array(labels, dtype=np.uint8)[:, None], 3072, axis=1)
        batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [k // 5 for k in labels],
                 b"filenames": [f"{i}.png".encode() for i in range(len(labels))], b"batch_label": part.encode()}
        files[f"cifar-100-python/{part}"] = pickle.dumps(batch, protocol=2)
    meta = {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [n.encode() for n in coarse]}
    if meta_extra is not None:
        meta[b"extra"] = meta_extra
    files["cifar-100-python/meta"] = pickle.dumps(meta, protocol=2)
    return write_tar_gz(path, files)


def cub_tar(path: Path, per_class=2, drop_one_image=False, only=None) -> Path:
    """`only`: the classes a partial copy holds (its index files list just those), by default all 200."""
    classes = sorted(all_classes("cub"))
    files, images, labels = {}, [], []
    for class_id, name in enumerate(classes, 1):
        if only is not None and name not in only:
            continue
        for i in range(per_class):
            image_id = len(images) + 1
            images.append(f"{image_id} {name}/{name.split('.', 1)[1]}_{i:04d}_{image_id}.jpg")
            labels.append(f"{image_id} {class_id}")
            files[f"CUB_200_2011/images/{images[-1].split(' ', 1)[1]}"] = solid_jpeg(colour_of(class_id - 1))
    if drop_one_image:
        files.pop(next(iter(files)))
    files["CUB_200_2011/images.txt"] = "\n".join(images).encode()
    files["CUB_200_2011/classes.txt"] = "\n".join(f"{i} {n}" for i, n in enumerate(classes, 1)
                                                  if only is None or n in only).encode()
    files["CUB_200_2011/image_class_labels.txt"] = "\n".join(labels).encode()
    files["attributes.txt"] = b"1 has_bill_shape::curved\n"
    return write_tar_gz(path, files)


BLUE, RED = (0, 0, 255), (255, 0, 0)


def aircraft_photo(width=32, height=52) -> bytes:
    """Blue sky, with the 20-pixel copyright banner in red along the bottom edge."""
    photo = np.zeros((height, width, 3), dtype=np.uint8)
    photo[:] = BLUE
    photo[-20:] = RED
    return encode(photo, "JPEG")


def aircraft_tar(path: Path, per_variant=2) -> Path:
    variants = sorted(all_classes("aircraft"))
    photo, files, lists = aircraft_photo(), {}, {"trainval": [], "test": []}
    for v, variant in enumerate(variants):
        for i in range(per_variant):
            image_id = f"{1000000 + v * per_variant + i:07d}"
            files[f"fgvc-aircraft-2013b/data/images/{image_id}.jpg"] = photo
            lists["trainval" if i % 2 == 0 else "test"].append(f"{image_id} {variant}")
    for part, lines in lists.items():
        files[f"fgvc-aircraft-2013b/data/images_variant_{part}.txt"] = "\n".join(lines).encode()
    files["fgvc-aircraft-2013b/data/variants.txt"] = "\n".join(variants).encode()
    files["fgvc-aircraft-2013b/data/families.txt"] = b"Boeing 707\n"
    return write_tar_gz(path, files)


def damaged(path: Path, out: Path, how: str) -> Path:
    """A copy cut in half ('truncated') or with bytes flipped in its middle ('corrupted')."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 2
        data[middle:middle + 256] = bytes(b ^ 0xFF for b in data[middle:middle + 256])
    out.write_bytes(bytes(data))
    return out
