"""Load the official checkpoints of DUSt3R, MASt3R, Pow3R and Fast3R, safely.

Recognised formats (see ``docs/models.md``):

* DUSt3R / MASt3R ``.pth``: ``{'args': Namespace(model='AsymmetricMASt3R(...)'), 'model': sd}``.
  As the official loader does, ``ManyAR_PatchEmbed`` becomes the plain patch embedding and
  ``landscape_only`` is forced to ``False``.
* Pow3R ``.pth``: ``{'definition': 'Pow3R(...)', 'weights': sd}``, built as written.
* Hugging Face folders (``PyTorchModelHubMixin``): ``config.json`` (constructor kwargs; bare
  ``Infinity`` tokens) and ``model.safetensors`` (tied tensors stored once, aliases in the file
  metadata). Fast3R's config has ``encoder_args``/``decoder_args``/``head_args``; a DUSt3R or
  MASt3R config holds the constructor kwargs themselves (MASt3R: ``output_mode='pts3d+desc*'``)
  and gets the same substitutions as their ``.pth`` files.

Nothing from a file is executed: pickles are read with ``weights_only=True`` (only
``argparse.Namespace`` is allow-listed) and constructor strings are parsed, not evaluated.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from threer_ros.models.spec import (FAST3R_CONFIG_KEYS, ModelSpec, SpecError,
                                    constructor_string, dpt_widths_from_shapes, fast3r_spec,
                                    parse_constructor)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def read_pth(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` a ``.pth``, allowing only ``argparse.Namespace``."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _fail(path, "refused to unpickle: the file contains objects other than tensors and "
                          f"plain values (possibly code). Detail: {str(exc).splitlines()[0]}"
                    ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable PyTorch checkpoint (truncated or corrupt?): {exc}"
                    ) from None
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _as_loaded_by_dust3r(spec: ModelSpec) -> ModelSpec:
    """What the official DUSt3R/MASt3R loaders build: plain patch embedding, no transposing."""
    kwargs = dict(spec.kwargs)
    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False
    return ModelSpec(spec.name, kwargs)


def _dust3r_family_spec(path: Path, ckpt: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    args = ckpt["args"]
    constructor = getattr(args, "model", None)
    if not isinstance(constructor, str):
        raise _fail(path, "'args' has no constructor string 'model'")
    spec = parse_constructor(constructor)
    if spec.name not in ("AsymmetricCroCo3DStereo", "AsymmetricMASt3R"):
        raise _fail(path, f"'args.model' names {spec.name}, not a DUSt3R/MASt3R network")
    return _as_loaded_by_dust3r(spec), ckpt["model"]


def _pow3r_spec(path: Path, ckpt: Mapping[str, Any]) -> tuple[ModelSpec, dict]:
    definition = ckpt["definition"]
    if not isinstance(definition, str):
        raise _fail(path, "'definition' is not a string")
    spec = parse_constructor(definition)
    if spec.name != "Pow3R":
        raise _fail(path, f"'definition' names {spec.name}, expected Pow3R")
    return spec, ckpt["weights"]


def _hf_folder_spec(folder: Path) -> tuple[ModelSpec, dict]:
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise _fail(folder, f"a checkpoint folder needs {f.name}, which is missing")
    try:
        config = json.loads(config_file.read_text())  # json accepts the bare Infinity tokens
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(config_file, f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise _fail(config_file, "expected a JSON object of constructor arguments")
    if FAST3R_CONFIG_KEYS & set(config):
        try:
            spec = fast3r_spec(config)
        except SpecError as exc:
            raise _fail(config_file, str(exc)) from None
    elif "output_mode" in config or "head_type" in config:
        mast3r = str(config.get("output_mode", "")).startswith("pts3d+desc")
        spec = _as_loaded_by_dust3r(
            ModelSpec("AsymmetricMASt3R" if mast3r else "AsymmetricCroCo3DStereo", config))
    else:
        raise _fail(config_file, "neither a Fast3R nor a DUSt3R/MASt3R config")
    return spec, read_safetensors(weights_file)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file and restore the tied tensors listed in its metadata.

    ``PyTorchModelHubMixin`` stores each group of tied tensors once; the metadata maps each
    dropped name to the stored one.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable safetensors file (truncated or corrupt?): {exc}"
                    ) from None
    for alias, stored in metadata.items():
        if stored in state and alias not in state:
            state[alias] = state[stored]
    return state


def read_checkpoint(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Recognise the format of ``path`` and return the network spec and its state dict.

    The spec carries the DPT widths read from the tensor shapes.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    try:
        if path.is_dir():
            spec, state = _hf_folder_spec(path)
        else:
            ckpt = read_pth(path)
            if "args" in ckpt and "model" in ckpt:
                spec, state = _dust3r_family_spec(path, ckpt)
            elif "definition" in ckpt and "weights" in ckpt:
                spec, state = _pow3r_spec(path, ckpt)
            else:
                raise _fail(path, f"unknown checkpoint layout with keys {sorted(ckpt)[:6]}; "
                                  "expected DUSt3R/MASt3R ('args', 'model') or Pow3R "
                                  "('definition', 'weights'), or a Hugging Face folder")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise _fail(path, "the state dict holds values that are not tensors")
        widths = dpt_widths_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    except SpecError as exc:
        raise _fail(path, str(exc)) from None
    if widths is not None:
        spec = ModelSpec(spec.name, spec.kwargs, widths)
    return spec, state


def write_checkpoint(spec: ModelSpec, state: Mapping[str, torch.Tensor], path: str | Path
                     ) -> Path:
    """Write ``state`` in the official format of ``spec``'s network (the formats above), so
    that :func:`read_checkpoint` and the official loaders read it: a ``.pth`` file for
    DUSt3R / MASt3R / Pow3R, a Hugging Face folder for Fast3R. Returns ``path``."""
    path = Path(path).expanduser()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if spec.name == "Fast3R":
        from safetensors.torch import save_file
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(dict(spec.kwargs), indent=1))
        # one storage per tensor: safetensors refuses tensors that share memory
        save_file({k: v.clone() for k, v in tensors.items()}, str(path / "model.safetensors"))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.name == "Pow3R":
        checkpoint = {"definition": constructor_string(spec), "weights": tensors}
    else:
        checkpoint = {"args": argparse.Namespace(model=constructor_string(spec)),
                      "model": tensors}
    with open(path, "wb") as f:          # an unwritable path raises OSError, naming it
        torch.save(checkpoint, f)
    return path


def load_state(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
            f"{len(wrong)} of wrong shape (e.g. {wrong[:2]})" if wrong else ""]))
        raise _fail(path, f"weights do not match the declared {type(model).__name__}: {detail}. "
                          "Is the file complete and for this model?")
    model.load_state_dict(state, strict=True, assign=True)
