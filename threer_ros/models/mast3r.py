"""MASt3R (``AsymmetricMASt3R``): DUSt3R's backbone with a head that adds local descriptors.

Same contract as :mod:`threer_ros.models.dust3r`; each result also holds ``desc``
(B, H, W, D unit vectors) and ``desc_conf`` (B, H, W).
"""

from __future__ import annotations

from typing import Any

from threer_ros.models.dust3r import (BACKBONE_DEFAULTS, DUST3R_DEFAULTS, AsymmetricStereo,
                                      merged_arguments)
from threer_ros.models.heads import PointsAndDescriptorsHead
from threer_ros.models.spec import ModelSpec, SpecError

MAST3R_DEFAULTS: dict[str, Any] = dict(desc_mode="norm", two_confs=False, desc_conf_mode=None)


def build(spec: ModelSpec) -> AsymmetricStereo:
    """MASt3R from a checkpoint spec (``AsymmetricMASt3R(...)``, head ``catmlp+dpt``)."""
    args = merged_arguments(spec, BACKBONE_DEFAULTS, DUST3R_DEFAULTS, MAST3R_DEFAULTS)
    mode = args["output_mode"]
    if args["head_type"] != "catmlp+dpt" or not mode.startswith("pts3d+desc"):
        raise SpecError(f"unsupported MASt3R head {args['head_type']!r} / output {mode!r}: the "
                        "released checkpoints use head_type='catmlp+dpt', 'pts3d+desc<D>'")
    if "norm" not in args["desc_mode"]:
        raise SpecError(f"unknown desc_mode {args['desc_mode']!r}")
    desc_dim = int(mode[len("pts3d+desc"):])

    def head(net: AsymmetricStereo) -> PointsAndDescriptorsHead:
        return PointsAndDescriptorsHead(
            net.enc_embed_dim, net.dec_embed_dim, net.dec_depth, spec.dpt, args["depth_mode"],
            args["conf_mode"] or None, desc_dim, bool(args["two_confs"]), args["desc_conf_mode"],
            net.patch_size)

    return AsymmetricStereo(args, head)
