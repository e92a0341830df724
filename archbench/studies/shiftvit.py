"""ShiftViT's "attention isn't the key" study (Wang et al., AAAI 2022) as four paired,
budget-matched ablations on a ShiftViT-like pyramid, at a scale a profile sets (small images on
a CPU up to ``imagenet``: ShiftViT-T/light's pyramid at 224 px with the paper's recipe):

1. ``mixer``: the token mixer at matched GMACs, depth adjusted (the paper's move: the budget
   a zero-FLOP shift saves is spent on more blocks). ``msa`` is the attention baseline (global
   attention: at the small profiles' grid sizes a Swin window would cover the whole map; at
   224 px it costs more than Swin's windows, see the imagenet profile's caveats); ``none``
   asks whether any spatial mixing is needed.
2. ``gamma``: the shifted-channel ratio γ (per direction) of the matched shift model.
3. ``mlp_ratio``: MLP ratio against depth at the same GMACs.
4. ``components``: norm (GroupNorm(1), the official "LN", vs BatchNorm) and activation
   (GELU vs ReLU), one at a time.

Arms shared by sections (the matched shift model is the base of 2-4) are trained once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from archbench.ablate.factors import Factor, apply_changes, parse_vary
from archbench.ablate.plan import Ablation, Arm, make_arms
from archbench.train.loop import Recipe
from archbench.train.recipe import PRESETS


MIXERS = "msa,shift,none,dmixer,outlook,cross-attn"
GAMMAS = "1/12,1/24,1/6"  # per direction; 1/12 is the official n_div=12 (1/3 of the channels move)
MLP_RATIOS = "4,2,1"
TOL = 0.05


@dataclass(frozen=True)
class Profile:
    """A scale the study runs at."""

    name: str
    dataset: str
    img_size: int
    base: dict[str, Any]
    seeds: int
    recipe: dict[str, Any]
    limit_train: int | None = None
    limit_test: int | None = None
    about: str = ""
    caveats: tuple[str, ...] = ()  # what this scale cannot show, for the report
    recipe_preset: str = "small"  # the train.recipe preset ``recipe`` changes
    mlp_ratios: str = MLP_RATIOS
    gpu_jobs: int = 12  # runs at once on a GPU machine; 0: one per GPU (per --nproc-per-run GPUs)


def _zoo_pyramid(name: str, **shorthand: Any) -> dict[str, Any]:
    """The shorthand (``make_spec`` keywords) of a zoo pyramid, its numbers read from the zoo,
    with ``shorthand`` added (e.g. the heads its attention arms use)."""
    from archbench.models.factory import get_entry

    spec = get_entry(name).make()
    st = spec.stages
    return dict(macro=spec.macro, dims=tuple(s.dim for s in st), depths=tuple(s.depth for s in st),
                mlp_ratio=tuple(s.mlp_ratio for s in st), patch_size=spec.stem.patch_size, norm=spec.norm,
                drop_path=spec.drop_path, options=spec.options.as_dict(), **shorthand)


def _dashed(xs) -> str:
    return "-".join(f"{x:g}" for x in xs)


# ShiftViT-T/light (zoo shiftvit_tiny_light; its γ is the shift's default 1/12); the attention
# arms get Swin-T's heads, 3-6-12-24 (head width 32; microsoft/Swin-Transformer swin_tiny config)
_IMAGENET = _zoo_pyramid("shiftvit_tiny_light", heads=(3, 6, 12, 24))


PROFILES = {
    # digits at 16 px, a 4-stage pyramid of width 24..192: the whole study in < 15 min on 2 CPU cores
    "quick": Profile("quick", "digits", 16, dict(macro="pyramid", dims=(24, 48, 96, 192), depths=(2, 2, 2, 2),
                                                 heads=(1, 2, 4, 8)),
                     seeds=2, recipe=dict(epochs=4, batch_size=64, warmup_epochs=1.0),
                     about="digits (8x8 upsampled to 16x16), 2 seeds, 4 epochs: a smoke-scale run for a CPU"),
    # CIFAR-10 at 32 px, patch 2 (16x16 tokens in stage 1), width 32..256: the committed study
    "default": Profile("default", "cifar10", 32, dict(macro="pyramid", dims=(32, 64, 128, 256), depths=(2, 2, 4, 2),
                                                      heads=(1, 2, 4, 8), patch_size=2),
                       seeds=3, recipe=dict(epochs=12, batch_size=512, lr=2e-3, warmup_epochs=1.0),
                       about="CIFAR-10 (all 50k train / 10k test) at 32x32, 3 seeds, 12 epochs at batch 512; "
                             "sized for one GPU (about 10 min on an H100 with 12 runs at a time)"),
    # CIFAR-10 subset at 32 px, patch 4 (8x8 tokens in stage 1, 1x1 in stage 4), width 24..192 (γ = 1/24 needs
    # 24 channels): every arm at 3 seeds on 2 CPU cores, in fp32
    "cpu": Profile("cpu", "cifar10", 32, dict(macro="pyramid", dims=(24, 48, 96, 192), depths=(2, 2, 4, 2),
                                              heads=(1, 2, 4, 8), patch_size=4),
                   seeds=3, recipe=dict(epochs=8, batch_size=128, lr=2e-3, warmup_epochs=1.0),
                   limit_train=20_000, limit_test=5_000,
                   about="CIFAR-10, class-balanced subsets of 20k train / 5k test images at 32x32, patch 4, width "
                         "24..192, 3 seeds, 8 epochs at batch 128; sized for a CPU (about 1 h on 2 cores, 2 runs "
                         "at a time)",
                   caveats=("Patch 4 on 32x32 images leaves 8x8, 4x4, 2x2 and 1x1 token grids: the mixers act in the "
                            "first three stages only, and attention is cheap at 64 tokens, so the budget it frees for "
                            "the shift arm is small (depths 2-2-4-2 → 3-3-7-3, against 4-4-8-4 in the default "
                            "profile).",
                            "20k training images and 8 epochs: accuracies sit far below convergence, and an arm that "
                            "learns faster early is favoured.")),
    # an ImageNet-format folder at 224 px, the paper's scale: sized for a multi-GPU machine (one run per GPU,
    # or per --nproc-per-run GPUs); `--dry-run` prints the device-hours it would take
    "imagenet": Profile("imagenet", "imagefolder", 224, _IMAGENET, seeds=1, recipe=dict(), recipe_preset="shiftvit",
                        mlp_ratios="4,2", gpu_jobs=0,
                        about="an ImageNet-format folder (train/ and val/) at 224x224: ShiftViT-T/light's pyramid "
                              f"(the zoo's shiftvit_tiny_light: dims {_dashed(_IMAGENET['dims'])}, depths "
                              f"{_dashed(_IMAGENET['depths'])}, patch {_IMAGENET['patch_size']}, MLP ratio "
                              f"{_IMAGENET['mlp_ratio'][0]:g}, γ 1/12), Swin-T's heads "
                              f"{_dashed(_IMAGENET['heads'])} in the attention arms, the shiftvit recipe (Swin's "
                              f"settings: {PRESETS['shiftvit'].epochs} epochs at a global batch of "
                              f"{PRESETS['shiftvit'].batch_size}), 1 seed; sized for a multi-GPU machine "
                              "(`--dry-run` estimates the device-hours)",
                        caveats=("`msa` is global attention, not Swin-T's 7x7 shifted windows: on the 56x56 tokens "
                                 "of stage 1 it costs about twice Swin-T's 4.5 GMACs at depths 2-2-6-2, and every "
                                 "arm is matched to that budget, so the matched shift model is about three times as "
                                 "deep as ShiftViT-T/light (see the budget column); ShiftViT-T/light itself is the "
                                 "shift arm before matching.",
                                 "MLP ratios 4 and 2 only (the official r4/r2 pair): at ratio 1 the matched depth "
                                 "falls outside the matcher's range.",
                                 "One seed per arm, as the papers train: each Δ is one paired difference, with no "
                                 "interval; `--seeds N` gives intervals at N times the cost.",
                                 f"The recipe's global batch of {PRESETS['shiftvit'].batch_size} is Swin's 8 GPUs x "
                                 "128: give each run 8 GPUs "
                                 "(`--nproc-per-run 8`) or a smaller `--batch-size` (the learning rate scales with "
                                 "it).")),
}


def default_jobs(profile: Profile, device: str, nproc_per_run: int = 1) -> int:
    """Runs at once: 1 on a CPU; on a GPU machine the profile's number, or (0) one run per GPU
    (per ``nproc_per_run`` GPUs)."""
    if not str(device).startswith("cuda"):
        return 1
    if profile.gpu_jobs:
        return profile.gpu_jobs
    import torch

    return max(1, torch.cuda.device_count() // max(1, nproc_per_run))


@dataclass
class Section:
    key: str
    title: str
    question: str
    ablation: Ablation
    factors: list[Factor] = field(default_factory=list)


def build(profile: Profile, *, dataset: dict[str, Any], recipe: Recipe, seeds: list[int], device: str,
          out: str, command: str, sections: tuple[str, ...] = ("mixer", "gamma", "mlp_ratio", "components"),
          on_arm=None, init: str | None = None) -> list[Section]:
    """The study's sections as ablations sharing one runs table under ``out``. ``init``: the
    weight-init scheme of every arm (None: the pyramid's family's, ShiftViT's)."""
    base = {**profile.base, "img_size": profile.img_size, "num_classes": dataset["num_classes"],
            "in_chans": dataset["in_chans"], **({"init": init} if init else {})}
    data = {k: v for k, v in dataset.items() if k not in ("num_classes", "in_chans")}

    def ablation(name: str, arms: list[Arm]) -> Ablation:
        return Ablation(name=name, arms=arms, seeds=seeds, recipe=recipe, dataset=data, device=device, out=out,
                        command=command)

    mix = [parse_vary(f"mixer={MIXERS}")]
    mixer_arms = make_arms(base, mix, match="gmacs", adjust="depth", tol=TOL, on_arm=on_arm)
    shift = next(a for a in mixer_arms if a.labels["mixer"] == "shift")
    shift_base = {**base, "mixer": "shift", "depths": tuple(s.depth for s in shift.spec.stages)}
    assert apply_changes(shift_base, {}).to_dict() == shift.spec.to_dict()
    out_sections = []
    if "mixer" in sections:
        out_sections.append(Section("mixer", "Token mixer at matched GMACs (depth adjusted)",
                                    "Does a zero-parameter shift (or no mixing at all) match attention when the "
                                    "saved budget goes into depth?", ablation("mixer", mixer_arms), mix))
    if "gamma" in sections:
        f = [parse_vary(f"shift_ratio={GAMMAS}")]
        out_sections.append(Section("gamma", "Shifted-channel ratio γ (per direction)",
                                    "How many channels should move?",
                                    ablation("gamma", make_arms(shift_base, f, on_arm=on_arm)), f))
    if "mlp_ratio" in sections:
        f = [parse_vary(f"mlp_ratio={profile.mlp_ratios}")]
        out_sections.append(Section("mlp_ratio", "MLP ratio vs depth at matched GMACs",
                                    "At a fixed budget, wide FFNs or more blocks?",
                                    ablation("mlp_ratio", make_arms(shift_base, f, match="gmacs", adjust="depth",
                                                                    tol=TOL, on_arm=on_arm)), f))
    if "components" in sections:
        f = [parse_vary("norm=groupnorm,batchnorm"), parse_vary("act=gelu,relu")]
        out_sections.append(Section("components", "Norm and activation (one at a time)",
                                    "LayerNorm-like GroupNorm(1) vs BatchNorm; GELU vs ReLU",
                                    ablation("components", make_arms(shift_base, f, design="oat", on_arm=on_arm)), f))
    order = {k: i for i, k in enumerate(sections)}
    return sorted(out_sections, key=lambda sec: order[sec.key])


# What the paper's official code and README say (read from microsoft/SPACH: README's ImageNet
# table and models/registry.py). The paper's own ablation tables could not be read offline
# (see the report); nothing here is a number we did not read.
PAPER = {
    "anchors": [
        ("Shift-T/light: depths 2-2-6-2, MLP ratio 4, n_div 12", "20M", "3.0G", "79.4"),
        ("Shift-T (r2): depths 6-8-18-6, MLP ratio 2, n_div 12", "29M", "4.5G", "81.7"),
        ("Shift-S/light: depths 2-2-18-2, MLP ratio 4", "34M", "5.7G", "81.6"),
        ("Shift-S (r2): depths 10-18-36-10, MLP ratio 2", "50M", "8.8G", "82.8"),
    ],
    "mixer": "The attention baseline is Swin-T. Shift-T/light keeps Swin-T's depths (2-2-6-2) and loses 1.5 G of "
             "its 4.5 GFLOPs; the deeper Shift-T spends them on blocks (r4: 2-2-12-3; r2: 6-8-18-6) and reaches "
             "81.7% at 4.5 G (official README). The paper's claim: on par with or better than Swin.",
    "gamma": "Official default n_div = 12: γ = 1/12 per direction, 1/3 of the channels move "
             "(n_div = 16, γ = 1/16, for the base models).",
    "mlp_ratio": "Official configurations at about the same budget: r4 (MLP ratio 4, depths 2-2-12-3, 4.596 "
                 "GMACs by our count) vs r2 (MLP ratio 2, depths 6-8-18-6, 4.609 GMACs); the README ships r2 as "
                 "Shift-T (81.7%).",
    "components": "Official options: norm_layer GN1 (GroupNorm with one group, 'to approximate LayerNorm', the "
                  "default) or BN; act_layer GELU (default) or RELU.",
}
