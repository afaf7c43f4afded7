"""Architectures of the officially released checkpoints (no weights), for tests and benchmarks.

Each entry is what the released file declares, so ``build_model(RELEASED[name])`` gives the
released network with random weights (or, under ``torch.device('meta')``, no storage at all).
"""

from __future__ import annotations

import math

from threer_ros.models.spec import ModelSpec, parse_constructor

_DUST3R_ARGS = ("pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
                "{head}, depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
                "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
                "dec_depth=12, dec_num_heads=12{extra}")

RELEASED: dict[str, ModelSpec] = {
    # DUSt3R_ViTLarge_BaseDecoder_512_dpt
    "dust3r": parse_constructor("AsymmetricCroCo3DStereo(" + _DUST3R_ARGS.format(
        head="head_type='dpt', output_mode='pts3d'", extra="") + ")"),
    # MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric
    "mast3r": parse_constructor("AsymmetricMASt3R(" + _DUST3R_ARGS.format(
        head="head_type='catmlp+dpt', output_mode='pts3d+desc24'",
        extra=", two_confs=True, desc_conf_mode=('exp', 0, inf)") + ")"),
    # Pow3R_ViTLarge_BaseDecoder_512_linear (definition inferred: see docs/models.md)
    "pow3r": parse_constructor(
        "Pow3R(mode='inject[0]_cls', head_type='linear_pts3d+conf;linear_pts3d+conf+pts3d2+conf2', "
        "patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), pos_embed='RoPE100', "
        "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, "
        "dec_num_heads=12)"),
    # Fast3R_ViT_Large_512 (config.json of the Hugging Face release)
    "fast3r": ModelSpec("Fast3R", {
        "encoder_args": {"encoder_type": "croco", "img_size": 512, "patch_size": 16,
                         "patch_embed_cls": "PatchEmbedDust3R", "embed_dim": 1024, "depth": 24,
                         "num_heads": 16, "mlp_ratio": 4, "pos_embed": "RoPE100",
                         "attn_implementation": "flash_attention"},
        "decoder_args": {"decoder_type": "fast3r", "enc_embed_dim": 1024, "embed_dim": 1024,
                         "depth": 24, "num_heads": 16, "mlp_ratio": 4.0, "qkv_bias": True,
                         "drop": 0.0, "attn_drop": 0.0, "attn_implementation": "flash_attention",
                         "random_image_idx_embedding": True,
                         "attn_bias_for_inference_enabled": False},
        "head_args": {"head_type": "dpt", "output_mode": "pts3d", "landscape_only": False,
                      "depth_mode": ["exp", -math.inf, math.inf],
                      "conf_mode": ["exp", 1, math.inf], "patch_size": 16,
                      "with_local_head": True},
    }),
}
