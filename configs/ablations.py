"""The paper's PIE ablations and single-modality baselines (docs/design.md, section 2).

--config configs/ablations.py:sfm_cfm     SFM + CFM, the full ASANet (78.31)
--config configs/ablations.py:cfm         CFM without SFM
--config configs/ablations.py:sum         SFM + point-wise sum fusion ("PWA", 77.81)
--config configs/ablations.py:sum_no_sfm  plain two-stream sum
--config configs/ablations.py:optical_only  UPerNet ConvNeXt V2 on optical (76.90, "RGB only")
--config configs/ablations.py:sar_only    UPerNet ConvNeXt V2 on SAR (66.73)

Each also as ``variant=<name>``; add ``,runlocal`` for 4 steps of a small model
(``configs/ablations.py:sar_only,runlocal``).
"""

from asanet_jax.train import recipe

VARIANTS = {
    "sfm_cfm": dict(sfm=True, fusion="cfm", modalities="optical+sar"),
    "cfm": dict(sfm=False, fusion="cfm", modalities="optical+sar"),
    "sum": dict(sfm=True, fusion="sum", modalities="optical+sar"),
    "sum_no_sfm": dict(sfm=False, fusion="sum", modalities="optical+sar"),
    "optical_only": dict(sfm=False, fusion="none", modalities="optical"),
    "sar_only": dict(sfm=False, fusion="none", modalities="sar"),
}


def get_config(arg: str | None = None):
    arg = recipe.parse_arg(
        arg, "configs/ablations.py", variant=("sfm_cfm", tuple(VARIANTS)), runlocal=False
    )
    config = recipe.for_dataset("pie_rgb_sar", runlocal=arg.runlocal)
    config.model.update(VARIANTS[arg.variant])
    return config
