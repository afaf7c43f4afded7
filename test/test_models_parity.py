"""Our networks reproduce the official outputs on every parity case (fp32, CPU).

Cases are read from ``shared/fixtures/parity/index.json``: any other set of the same kind
(other seeds, sizes, view counts, widths) runs through the same code. Checkpoints are loaded
through ``threer_ros.models.load_model`` from the official file formats.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from threer_ros.bench import fixture_inputs, run_parity_case
from threer_ros.models import compile_blocks, load_model
from threer_ros.models.fast3r import draw_image_ids
from threer_ros.models.pow3r import encode_priors

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "fixtures" / "parity"
NETWORKS = ("dust3r", "mast3r", "pow3r", "fast3r")


def _cases(model: str) -> list[tuple[str, str]]:
    index = json.loads((PARITY / "index.json").read_text())
    fixture = json.loads((PARITY / index["models"][model]["fixture"]).read_text())
    return [(model, case["file"]) for case in fixture["cases"]]


def _case_info(model: str, file: str) -> dict:
    fixture = json.loads((PARITY / model / "fixture.json").read_text())
    return next(c for c in fixture["cases"] if c["file"] == file)


def _checkpoint(model: str) -> Path:
    return PARITY / model / ("checkpoint" if model == "fast3r" else "checkpoint.pth")


def _tolerance(name: str) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-4} if name.startswith("desc") and "conf" not in name \
        else {"rtol": 1e-5, "atol": 1e-5}


@functools.lru_cache(maxsize=None)
def _network(model: str) -> torch.nn.Module:
    return load_model(_checkpoint(model))


@pytest.mark.parametrize("case", [c for m in NETWORKS for c in _cases(m)],
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_outputs_match_the_official_implementation(case):
    model_name, file = case
    data = np.load(PARITY / model_name / file)
    ours = run_parity_case(model_name, _network(model_name), data)
    expected = {k: data[k] for k in data.files if k.startswith("out.")}
    assert set(ours) == set(expected)
    for key, ref in expected.items():
        got = ours[key].numpy()
        assert got.shape == ref.shape and got.dtype == ref.dtype, key
        np.testing.assert_allclose(got, ref, err_msg=key, **_tolerance(key.rsplit(".", 1)[1]))


@pytest.mark.parametrize("case", _cases("pow3r"), ids=lambda c: c[1])
def test_pow3r_priors_are_encoded_like_the_official_inference(case):
    data = np.load(PARITY / "pow3r" / case[1])
    plain = [{k: v for k, v in fixture_inputs(data, f"in.view{i}.").items()
              if not k.startswith("known")} for i in (1, 2)]
    args = fixture_inputs(data, "in.arg.")
    ours = encode_priors(*plain, **args)
    for i, view in enumerate(ours, start=1):
        expected = {k: v for k, v in fixture_inputs(data, f"in.view{i}.").items()
                    if k.startswith("known")}
        assert {k for k in view if k.startswith("known")} == set(expected)
        for key, ref in expected.items():
            np.testing.assert_allclose(view[key].numpy(), ref.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=key)


@pytest.mark.parametrize("case", _cases("fast3r"), ids=lambda c: c[1])
def test_fast3r_draws_image_ids_like_the_official_forward(case):
    data = np.load(PARITY / "fast3r" / case[1])
    torch.manual_seed(_case_info("fast3r", case[1])["torch_manual_seed_before_forward"])
    batch, views = data["in.image_ids"].shape
    np.testing.assert_array_equal(draw_image_ids(batch, views).numpy(), data["in.image_ids"])


def test_pow3r_takes_portrait_images_transposed_and_mixed_batches():
    """As the released definition (ManyAR patch embedding, landscape_only): a portrait image is
    given as its landscape transpose with its portrait ``true_shape``; a batch may mix both."""
    model = _network("pow3r")
    torch.manual_seed(0)
    landscape = torch.rand(1, 3, 48, 64) * 2 - 1
    portrait = torch.rand(1, 3, 64, 48) * 2 - 1                 # an upright portrait image

    def view(img_landscape_layout, shape):
        return {"img": img_landscape_layout, "true_shape": torch.tensor([shape])}

    with torch.no_grad():
        alone_l = model(view(landscape, [48, 64]), view(landscape, [48, 64]))
        alone_p = model(view(portrait.transpose(-1, -2), [64, 48]),
                        view(portrait.transpose(-1, -2), [64, 48]))
        mixed_img = torch.cat([landscape, portrait.transpose(-1, -2)])
        mixed_view = {"img": mixed_img, "true_shape": torch.tensor([[48, 64], [64, 48]])}
        mixed = model(mixed_view, mixed_view)
    for side in (0, 1):
        for key, value in mixed[side].items():
            torch.testing.assert_close(value[0], alone_l[side][key][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(value[1], alone_p[side][key][0], rtol=1e-4, atol=1e-5)
    assert alone_p[0]["pts3d"].shape == (1, 48, 64, 3)         # landscape layout, like its input
    with pytest.raises(ValueError, match="takes landscape tensors"):
        model(view(portrait, [64, 48]), view(portrait, [64, 48]))


@pytest.mark.parametrize("model_name", ["mast3r", "pow3r"])
@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
def test_encoding_each_image_once_gives_the_pairwise_outputs(model_name, portrait):
    """``forward_pairs`` (each image encoded once, pairs decoded in chunks) equals ``forward``
    on the gathered pairs, priors included, for both orientations."""
    torch.manual_seed(0)
    network = _network(model_name)
    shape = (64, 48) if portrait else (48, 64)
    img = torch.rand(4, 3, *shape) * 2 - 1
    first, second = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([1, 0, 3, 2, 3, 1])
    flip = getattr(network, "landscape_only", False) and portrait
    given = img.transpose(-1, -2) if flip else img          # landscape-only: portrait transposed
    view = {"img": given, "true_shape": torch.tensor([list(shape)] * 4, dtype=torch.int32)}
    extra = {}
    if model_name == "pow3r":
        K = torch.tensor([[50.0, 0, 23.5], [0, 50.0, 31.5], [0, 0, 1]]).expand(4, 3, 3)
        cams = torch.eye(4).repeat(4, 1, 1)
        cams[:, 0, 3] = torch.arange(4.0)
        priors, _ = encode_priors(view, view, K1=K)
        view["known_rays"] = priors["known_rays"].transpose(-1, -2) if flip \
            else priors["known_rays"]
        extra["known_pose"] = encode_priors(view, view, cam1=cams[first],
                                            cam2=cams[second])[0]["known_pose"]
    with torch.no_grad():
        once = network.forward_pairs(view, first, second, pair_batch=4, **extra)
        gathered = [{k: v[index] for k, v in view.items()} for index in (first, second)]
        for g in gathered:
            g.update(extra)
        reference = network(*gathered)
    for ours, theirs in zip(once, reference):
        assert set(ours) == set(theirs)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-5)


def test_compiled_blocks_give_the_official_outputs():
    """``compile_network`` (torch.compile of every block and head) changes speed, not results:
    the first Fast3R parity case through the compiled network (CPU, fp32)."""
    for model_name in ("fast3r",):
        model = load_model(_checkpoint(model_name))
        assert compile_blocks(model) >= 4
        data = np.load(PARITY / model_name / _cases(model_name)[0][1])
        ours = run_parity_case(model_name, model, data)
        for key in (k for k in data.files if k.startswith("out.")):
            np.testing.assert_allclose(ours[key].numpy(), data[key], err_msg=key,
                                       rtol=1e-4, atol=1e-4)


def test_fast3r_batch_of_sets_gives_each_set_own_outputs():
    """A batch of two view sets gives each set the outputs it gets alone (the heads regroup
    the decoder's tokens view by view; the fixtures hold batches of one)."""
    model = load_model(_checkpoint("fast3r"))
    g = torch.Generator().manual_seed(0)
    views = [{"img": torch.rand(2, 3, 32, 48, generator=g) * 2 - 1} for _ in range(3)]
    ids = torch.tensor([[0, 1, 2], [2, 0, 1]])
    with torch.inference_mode():
        both = model(views, image_ids=ids)
        for b in range(2):
            alone = model([{"img": v["img"][b:b + 1]} for v in views], image_ids=ids[b:b + 1])
            for view_both, view_alone in zip(both, alone):
                assert view_both.keys() == view_alone.keys()
                for key in view_both:
                    torch.testing.assert_close(view_both[key][b], view_alone[key][0],
                                               rtol=1e-5, atol=1e-5)


def test_pairs_without_descriptors_give_the_same_points_and_skip_the_descriptor_head():
    """``forward_pairs(descriptors=False)`` (the calibrated fast path's call): MASt3R's points
    and confidences unchanged, no descriptors, and its descriptor MLP never runs."""
    network = _network("mast3r")
    calls = []
    network.downstream_head1.head_local_features.register_forward_hook(
        lambda *_: calls.append(1))
    img = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    view = {"img": img, "true_shape": torch.tensor([[48, 64]] * 3, dtype=torch.int32)}
    first, second = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    with torch.no_grad():
        full = network.forward_pairs(view, first, second)
        assert calls
        calls.clear()
        points_only = network.forward_pairs(view, first, second, descriptors=False)
    assert not calls
    for ours, reference in zip(points_only, full):
        assert set(ours) == set(reference) - {"desc", "desc_conf"}
        for key in ours:
            torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=0)
