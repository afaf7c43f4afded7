"""Checkpoint loading: every official format, released architectures, and refused files."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from threer_ros.models import CheckpointError, build_model, load_model
from threer_ros.models.checkpoint import read_checkpoint, write_checkpoint
from threer_ros.models.released import RELEASED
from threer_ros.models.spec import SpecError, parse_constructor

PARITY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"
FORMATS = {"dust3r": "checkpoint.pth", "mast3r": "checkpoint.pth", "pow3r": "checkpoint.pth",
           "fast3r": "checkpoint"}

#: Parameter counts of the released networks (tied tensors counted once).
RELEASED_PARAMETERS = {"dust3r": 571_171_208, "mast3r": 688_638_856, "pow3r": 555_733_504,
                       "fast3r": 647_551_368}


@pytest.mark.parametrize("model", sorted(FORMATS))
def test_each_official_format_loads_strictly_in_eval_mode(model):
    net = load_model(PARITY / model / FORMATS[model], dtype=torch.float32)
    assert not net.training
    params = {p.device.type for p in net.parameters()}
    assert params == {"cpu"}


@pytest.mark.parametrize("model", sorted(FORMATS))
def test_a_written_checkpoint_reads_back_as_the_same_network(model, tmp_path):
    spec, state = read_checkpoint(PARITY / model / FORMATS[model])
    written = write_checkpoint(spec, state, tmp_path / FORMATS[model])
    assert written.is_dir() == (model == "fast3r")      # Fast3R: a Hugging Face folder
    again, reread = read_checkpoint(written)
    assert again == spec
    assert reread.keys() == state.keys()
    assert all(torch.equal(reread[k], state[k]) for k in state)


@pytest.mark.parametrize("model", sorted(RELEASED))
def test_released_architectures_build_on_meta_with_the_official_size(model):
    with torch.device("meta"):
        net = build_model(RELEASED[model])
    assert sum(p.numel() for p in net.parameters()) == RELEASED_PARAMETERS[model]
    assert all(p.is_meta for p in net.parameters())


def test_fast3r_builds_from_its_config_json_dict():
    """``build_model`` takes the dict of Fast3R's ``config.json`` as json loads it."""
    config = json.loads(json.dumps(dict(RELEASED["fast3r"].kwargs)))   # bare Infinity tokens
    with torch.device("meta"):
        net = build_model(config)
    assert sum(p.numel() for p in net.parameters()) == RELEASED_PARAMETERS["fast3r"]
    with pytest.raises(SpecError, match="missing.*head_args"):
        build_model({k: v for k, v in config.items() if k != "head_args"})


def test_released_dpt_widths_come_from_the_tensor_shapes():
    """The tiny fixtures narrow the DPT heads; the loader must read the widths, not assume them."""
    net = load_model(PARITY / "dust3r" / "checkpoint.pth")
    assert net.downstream_head1.dpt.scratch.layer1_rn.weight.shape[:2] == (16, 8)
    with torch.device("meta"):
        released = build_model(RELEASED["dust3r"])
    assert released.downstream_head1.dpt.scratch.layer1_rn.weight.shape[:2] == (256, 96)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth: no such checkpoint"):
        load_model(tmp_path / "nothing.pth")


def test_a_truncated_file_is_refused_with_its_name(tmp_path):
    data = (PARITY / "mast3r" / "checkpoint.pth").read_bytes()
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth.*truncated or corrupt"):
        load_model(broken)


def test_a_truncated_safetensors_file_is_refused(tmp_path):
    folder = tmp_path / "fast3r"
    shutil.copytree(PARITY / "fast3r" / "checkpoint", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


def test_weights_of_another_model_are_refused_with_the_mismatch(tmp_path):
    mast3r = torch.load(PARITY / "mast3r" / "checkpoint.pth", weights_only=False)
    dust3r = torch.load(PARITY / "dust3r" / "checkpoint.pth", weights_only=False)
    mixed = tmp_path / "mixed.pth"
    torch.save({"args": mast3r["args"], "model": dust3r["model"], "epoch": 0}, mixed)
    with pytest.raises(CheckpointError, match="mixed.pth: weights do not match.*(missing|shape)"):
        load_model(mixed)


def test_a_constructor_that_calls_code_is_refused(tmp_path):
    ckpt = torch.load(PARITY / "dust3r" / "checkpoint.pth", weights_only=False)
    ckpt["args"] = argparse.Namespace(model="AsymmetricCroCo3DStereo(pos_embed=__import__('os')"
                                            ".system('touch /tmp/pwned'))")
    tampered = tmp_path / "tampered.pth"
    torch.save(ckpt, tampered)
    with pytest.raises(CheckpointError, match="tampered.pth.*not a literal"):
        load_model(tampered)
    with pytest.raises(SpecError, match="not a call of a model class"):
        parse_constructor("os.system('true')")
    with pytest.raises(SpecError, match="unknown model class"):
        parse_constructor("Exploit(a=1)")


class _RunsCode:
    """Unpickling this object would create a marker file (a stand-in for malicious code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        torch.save({"args": _RunsCode(marker), "model": {}, "epoch": 0}, f,
                   pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="evil.pth: refused to unpickle"):
        load_model(evil)
    assert not marker.exists()


def test_fast3r_config_with_bare_infinity_tokens_is_read(tmp_path):
    text = (PARITY / "fast3r" / "checkpoint" / "config.json").read_text()
    assert "Infinity" in text
    net = load_model(PARITY / "fast3r" / "checkpoint")
    assert net.downstream_head.conf_mode[2] == float("inf")
    folder = tmp_path / "broken"
    shutil.copytree(PARITY / "fast3r" / "checkpoint", folder)
    (folder / "config.json").write_text(json.dumps({"depth": 3}))
    with pytest.raises(CheckpointError, match="config.json: neither a Fast3R nor"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"encoder_args": {}, "head_args": {}}))
    with pytest.raises(CheckpointError, match="config.json: not a Fast3R config"):
        load_model(folder)


def test_mast3r_in_the_hugging_face_folder_format_matches_its_pth(tmp_path):
    """The hub release of MASt3R is config.json (constructor kwargs) + model.safetensors."""
    from safetensors.torch import save_file

    ckpt = torch.load(PARITY / "mast3r" / "checkpoint.pth", weights_only=False)
    kwargs = parse_constructor(ckpt["args"].model).kwargs
    folder = tmp_path / "mast3r_hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(kwargs, indent=2))
    # as the hub mixin writes it: each tied DPT tensor once, the alias in the metadata
    aliases = {k: k.replace(f"layer_rn.{k[-8]}", f"layer{int(k[-8]) + 1}_rn")
               for k in ckpt["model"] if ".layer_rn." in k}
    save_file({k: v.contiguous() for k, v in ckpt["model"].items() if k not in aliases},
              str(folder / "model.safetensors"), metadata=aliases)
    from_hub, from_pth = load_model(folder), load_model(PARITY / "mast3r" / "checkpoint.pth")
    view = {"img": torch.rand(1, 3, 48, 64) * 2 - 1, "true_shape": torch.tensor([[48, 64]])}
    with torch.no_grad():
        a, b = from_hub(view, view)[1], from_pth(view, view)[1]
    assert type(from_hub) is type(from_pth)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
