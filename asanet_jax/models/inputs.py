"""The input check every segmentor makes before its first layer."""

from __future__ import annotations


def check_inputs(config, optical, sar) -> None:
    """Raise ValueError, naming the input, unless each stream the model has gets an NHWC
    array with its band count, at least ``config.min_input_side`` pixels high and wide,
    and two streams agree in batch and size."""
    given = {"optical": optical, "sar": sar}
    bands = {"optical": config.optical_channels, "sar": config.sar_channels}
    min_size = config.min_input_side
    for name in config.streams:
        x = given[name]
        if x is None:
            raise ValueError(f"{config.describe()} needs the {name} input")
        if x.ndim != 4 or x.shape[-1] != bands[name]:
            raise ValueError(
                f"{name} input has shape {tuple(x.shape)}: expected NHWC (B, H, W, {bands[name]})"
            )
        if x.shape[1] < min_size or x.shape[2] < min_size:
            raise ValueError(
                f"{name} input is {x.shape[1]}x{x.shape[2]}: this model's stages need H and W "
                f"of at least {min_size}"
            )
    if len(config.streams) == 2 and optical.shape[:3] != sar.shape[:3]:
        raise ValueError(
            f"optical {tuple(optical.shape)} and sar {tuple(sar.shape)} differ in batch or size"
        )
