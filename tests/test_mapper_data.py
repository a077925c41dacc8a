"""Mapper data: COCO and Frozen-format loaders on generated files in the official formats, the feature
cache, the synthetic family, answer scoring (exact and name match) and the one-line errors."""
import json

import numpy as np
import pytest
import torch

from kml.data.errors import DataError
from kml.mapper import coco, encoders, features, frozen_bench, novel_names, sources
from kml.mapper.metrics import caption_template, exact_match, name_match, normalise
from tests.mapper_fixtures import mapper_config, single_thread, write_coco, write_frozen  # noqa: F401


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("prediction, answer, expected", [
    ("This is a dax.", "this is a dax", True),
    ("this is dax", "This is a dax", True),          # articles are dropped, as VQA normalisation
    ("  this   is a   DAX ", "this is a dax", True),
    ("this is a dax dax", "this is a dax", False),   # whole-string match, not a prefix or token overlap
    ("dax", "this is a dax", False),
    ("this is a wug", "this is a dax", False),
    ("", "dax", False),
])
def test_exact_match_hand_cases(prediction, answer, expected):
    assert exact_match(prediction, answer) is expected


def test_normalisation():
    assert normalise("The Red, round ball!") == "red round ball"


@pytest.mark.parametrize("captions, template", [
    (["this is a dax", "This is a blicket."], ["this", "is"]),            # articles are normalised away
    (["this is a golden retriever", "this is a labrador retriever"], ["this", "is"]),  # beginnings only
    (["this is a dax", "this is a dax dax"], ["this", "is"]),             # a name is never all template
    (["a man riding a horse", "two dogs on grass"], []),                  # COCO-like: nothing shared
    (["this is a dax"], []),                                              # one caption: no telling
])
def test_caption_template_is_the_shared_beginning(captions, template):
    assert caption_template(captions) == template


SUPPORT = ["this is a dax", "this is a blicket"]


@pytest.mark.parametrize("prediction, answer, expected", [
    ("this is a dax", "dax", True),              # a bare-name answer (the released Frozen files)
    ("this is a dax", "this is a dax", True),    # a full-caption answer
    ("This is a Dax.", "a dax", True),
    ("dax", "dax", True),                        # a generated bare name
    ("dax", "this is a dax", True),
    ("this is a dax dax", "dax", False),         # the whole name, not a prefix of it
    ("this is a blicket", "dax", False),
    ("that is a dax", "dax", False),             # only the support's template is removed
    ("this is", "dax", False),
    ("", "dax", False),
])
def test_name_match_hand_cases(prediction, answer, expected):
    assert name_match(prediction, answer, caption_template(SUPPORT)) is expected


def test_multi_word_names_and_no_template():
    template = caption_template(["this is a golden retriever", "this is a labrador retriever"])
    assert name_match("this is a golden retriever", "golden retriever", template)
    assert not name_match("this is a labrador retriever", "golden retriever", template)
    assert name_match("A man riding.", "a man riding", []) and not name_match("man", "a man riding", [])


def test_coco_reader_groups_images_by_dominant_category(tmp_path):
    source = write_coco(tmp_path / "coco", categories=3, images_per_category=4)
    data = coco.read_coco(source)
    assert len(data.files) == 12 and all(f.is_file() for f in data.files)
    assert data.category == [f"cat{c}" for c in range(3) for _ in range(4)]  # not the stray box's category
    assert data.captions[0] == ["A thing 0 seen 0, view 0.", "A thing 0 seen 1, view 0."]
    assert data.split == ["train"] * 12  # no image id is divisible by 50
    assert len(coco.read_coco(source, max_images=5).files) == 5
    # The released rule: the last annotation's category, here each image's stray box.
    released = coco.read_coco(source, category="last_annotation")
    assert released.category == [f"cat{(c + 1) % 3}" for c in range(3) for _ in range(4)]


@pytest.mark.parametrize("damage, words", [
    (lambda s: (s / "annotations" / "captions_train2017.json").unlink(), ["captions_train2017.json", "layout"]),
    (lambda s: (s / "annotations" / "instances_train2017.json").write_text("{not json"), ["not valid JSON"]),
    (lambda s: (s / "annotations" / "captions_train2017.json").write_text('{"images": []}'), ["no 'annotations'"]),
    (lambda s: (s / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1}]})),
     ["miss a field", "caption"]),
])
def test_bad_coco_files_give_one_line_errors(tmp_path, damage, words):
    source = write_coco(tmp_path / "coco")
    damage(source)
    with pytest.raises(DataError) as excinfo:
        coco.read_coco(source)
    one_line_error(excinfo, *words)


def test_frozen_reader_reads_the_official_format(tmp_path):
    write_frozen(tmp_path, "fast_vqa", way=2, shot=1, tasks=3, question="what colour is the dax?")
    tasks = frozen_bench.read_frozen(tmp_path, "fast_vqa", way=2, shot=1)
    assert len(tasks) == 3
    assert tasks[0].support_captions == ["this is a dax", "this is a blicket"]
    assert tasks[0].question == "what colour is the dax?" and tasks[0].answer == "this is a dax"
    assert all(p.is_file() for t in tasks for p in (*t.support_images, t.question_image))


def test_frozen_real_fast_vqa_reads_the_guided_vqa_release(tmp_path):
    write_frozen(tmp_path, "guided_vqa", way=2, shot=1, tasks=1)
    assert len(frozen_bench.read_frozen(tmp_path, "real_fast_vqa", way=2, shot=1)) == 1


@pytest.mark.parametrize("edit, words", [
    (lambda entries: entries[1].pop("image_2"), ["task 1", "1 support images", "2×1"]),
    (lambda entries: entries[0].pop("answer"), ["task 0", "answer"]),
    (lambda entries: entries[2].update(question_image=7), ["question_image", "not an image file name"]),
])
def test_bad_frozen_entries_give_one_line_errors(tmp_path, edit, words):
    path = write_frozen(tmp_path, way=2, shot=1)
    entries = json.loads(path.read_text())
    edit(entries)
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError) as excinfo:
        frozen_bench.read_frozen(tmp_path, "open_ended_mi", way=2, shot=1)
    one_line_error(excinfo, *words)


def test_missing_frozen_file_names_what_is_there(tmp_path):
    write_frozen(tmp_path, way=2, shot=1)
    with pytest.raises(DataError) as excinfo:
        frozen_bench.read_frozen(tmp_path, "open_ended_mi", way=5, shot=1)
    one_line_error(excinfo, "open_ended_mi_shots_1_ways_5_all_questions.json", "ways_2", "open_ended_mi.tar.gz")
    (tmp_path / "open_ended_mi" / "open_ended_mi_shots_1_ways_2_all_questions.json").write_text("[{")
    with pytest.raises(DataError) as excinfo:
        frozen_bench.read_frozen(tmp_path, "open_ended_mi", way=2, shot=1)
    one_line_error(excinfo, "not valid JSON")


def test_features_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cfg = mapper_config([f"data.root={tmp_path}"])
    images = [np.full((8, 8, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    keys = [f"image{i}" for i in range(5)]
    first = features.cached_features(tmp_path, "toy", cfg.vision, keys, lambda rows: [images[r] for r in rows])
    assert first.shape == (5, 1, 32) and first.dtype == np.float16

    def no_encoder(*args, **kwargs):
        raise AssertionError("the vision encoder ran although the features were cached")

    monkeypatch.setattr(features, "load_vision", no_encoder)
    again = features.cached_features(tmp_path, "toy", cfg.vision, keys, lambda rows: [images[r] for r in rows])
    assert np.array_equal(first, again)
    other = {**cfg.vision, "seed": 1}  # another encoder: another cache, never the stale one
    assert features.vision_id(other) != features.vision_id(cfg.vision)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        features.open_image(tmp_path / "train2017" / "000000000001.jpg")
    one_line_error(excinfo, "000000000001.jpg", "missing")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as excinfo:
        features.open_image(tmp_path / "broken.jpg")
    one_line_error(excinfo, "broken.jpg", "cannot be decoded")


def test_coco_episodes_pair_cached_features_with_their_captions(tmp_path):
    source = write_coco(tmp_path / "coco", categories=3, images_per_category=4)
    cfg = mapper_config([f"data.root={tmp_path}", "way=2", "shot=1shot", f"mapper.coco.source={source}"])
    episodes = sources.training_episodes(cfg, "train", 2, seed=0, device=torch.device("cpu"))
    task = episodes.task(0)
    assert task.support.shape == (2, 1, 32) and task.query.shape == (4, 1, 32)
    assert all(t.startswith("A thing") for t in task.support_text + task.query_answer)
    assert task.support_text == episodes.task(0).support_text  # a task is a function of (seed, index)


@pytest.mark.parametrize("sampling", ["images", "caption_pairs"])
def test_coco_tasks_show_each_image_with_its_own_captions(tmp_path, sampling):
    source = write_coco(tmp_path / "coco", categories=3, images_per_category=4)
    cfg = mapper_config([f"data.root={tmp_path}", "way=2", "shot=1shot", f"mapper.coco.source={source}",
                         f"mapper.coco.sampling={sampling}"])
    episodes = sources.training_episodes(cfg, "train", 2, seed=0, device=torch.device("cpu"))
    data = coco.read_coco(source)
    cached = torch.from_numpy(np.asarray(episodes.features, dtype=np.float32))
    repeats = 0
    for index in range(20):
        task = episodes.task(index)
        shown = [(f, t) for f, t in zip(task.support, task.support_text, strict=True)]
        shown += [(f, t) for f, t in zip(task.query, task.query_answer, strict=True)]
        rows = [int((cached == f).all(-1).all(-1).nonzero()[0]) for f, _ in shown]
        assert all(text in data.captions[row] for row, (_, text) in zip(rows, shown, strict=True))
        repeats += len(rows) - len(set(rows))
    # Over pairs an image can recur in a task under another caption (the released sampling); never over images.
    assert (repeats > 0) == (sampling == "caption_pairs")


def test_frozen_tasks_put_the_question_in_the_prompt_for_vqa_only(tmp_path):
    write_frozen(tmp_path / "frozen", "fast_vqa", question="what is the dax?")
    write_frozen(tmp_path / "frozen", "open_ended_mi", question="what is this?")
    for name, prompt in (("fast_vqa", "what is the dax?"), ("open_ended_mi", "")):
        cfg = mapper_config([f"data.root={tmp_path}", "way=2", "shot=1shot", f"mapper.eval_data={name}"])
        tasks, count = sources.test_tasks(cfg, seed=0, device=torch.device("cpu"))
        task = tasks.task(0)
        assert count == 3 and task.support.shape == (2, 1, 32) and task.query_prompt == [prompt]
        assert task.query_answer == ["this is a dax"]


def test_novel_name_family_splits_classes_and_names():
    splits = novel_names.class_splits()
    assert sum(map(len, splits.values())) == 48 and not set(splits["train"]) & set(splits["test"])
    assert not set(novel_names.names("train", "disjoint")) & set(novel_names.names("test", "disjoint"))
    assert novel_names.names("test", "shared") == novel_names.names("train", "shared")
    picture = novel_names.render("circle", "red", 2, 16, torch.Generator().manual_seed(0))
    assert picture.shape == (2, 16, 16, 3) and picture.dtype == np.uint8 and not np.array_equal(*picture)


def test_missing_model_weights_say_which_files_go_where(tmp_path):
    spec = {"name": "gpt2", "hub": "openai-community/gpt2", "local_dir": str(tmp_path / "gpt2"),
            "download": False}
    with pytest.raises(encoders.ModelFilesMissing) as excinfo:
        encoders.load_lm(spec)
    one_line_error(excinfo, "config.json", "model.safetensors", "tokenizer", str(tmp_path / "gpt2"))
    with pytest.raises(encoders.ModelFilesMissing) as excinfo:
        encoders.load_vision({"name": "clip", "local_dir": "package:no_such_package_here", "features": "embeds"})
    one_line_error(excinfo, "no_such_package_here", "pip install")


def test_models_load_frozen_from_a_local_folder_in_hugging_face_layout(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from kml.mapper import tiny

    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                          num_attention_heads=4, image_size=32, patch_size=8,
                                                          projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    tiny.tiny_vision({"image_size": 32})[1].save_pretrained(tmp_path / "clip")
    model, processor, kind = encoders.load_vision({"name": "clip", "local_dir": str(tmp_path / "clip"),
                                                   "features": "embeds", "download": False})
    pixels = processor(images=[np.zeros((40, 40, 3), dtype=np.uint8)], return_tensors="pt")["pixel_values"]
    assert encoders.visual_features(model, pixels, kind).shape == (1, 1, 16)
    tokenizer = tiny.word_tokenizer()
    tiny.tiny_lm(tokenizer, {"pretrain_steps": 0}).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    lm, loaded_tokenizer = encoders.load_lm({"name": "lm", "local_dir": str(tmp_path / "lm"), "download": False})
    assert type(lm).__name__ == "GPT2LMHeadModel" and loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    for frozen in (model, lm):
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
