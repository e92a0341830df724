"""Fixes for what our dependencies get wrong together.

- timm's RandAugment ``inc1`` (the DeiT recipe's ``rand-m9-mstd0.5-inc1``) posterizes to
  ``4 - level`` bits, which reaches 0 bits at the top magnitudes; Pillow ≥ 13 refuses
  ``ImageOps.posterize(img, 0)`` ("bits must be between or equal to 1 and 8") where older
  Pillow returned a black image. Keeping 0 bits means every pixel becomes 0, so that is
  what we return, as the augmentation was designed (TF models research / UDA).
"""
from __future__ import annotations


def _posterize(img, bits_to_keep, **_):
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # all zeros: nothing of any pixel kept
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    """Point timm's posterize ops at :func:`_posterize` (idempotent)."""
    import timm.data.auto_augment as aa

    for name, op in list(aa.NAME_TO_OP.items()):
        if op is aa.posterize:
            aa.NAME_TO_OP[name] = _posterize
