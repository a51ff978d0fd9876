"""Build one of the RGB-SAR TFDS datasets without TensorFlow (same result as `tfds build`).

    python scripts/build_dataset.py pie_rgb_sar --data_dir ~/tensorflow_datasets \
        --manual_dir /data/PIE-RGB-SAR
    python scripts/build_dataset.py synthetic_rgb_sar --data_dir data --config tiny
    python scripts/build_dataset.py rgb_sar_folder --data_dir data --manual_dir /data/my_fields
"""

from __future__ import annotations

from asanet_jax import interrupts

interrupts.hold()  # first: a Ctrl-C during the imports below ends cleanly too

import argparse
import sys

from asanet_jax import errors
from asanet_jax.data import build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=build.BUILDERS)
    parser.add_argument("--data_dir", required=True, help="where TFDS datasets are written")
    parser.add_argument("--manual_dir", help="the extracted source dataset")
    parser.add_argument("--config", help="builder config (synthetic_rgb_sar: default, tiny)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a build of this dataset in --data_dir (needed when its sources changed)",
    )
    parser.add_argument(
        "--accept_misaligned",
        action="store_true",
        help="build although optical, SAR and label differ in CRS or geotransform",
    )
    parser.add_argument(
        "--allow_missing_scenes",
        action="store_true",
        help="whu_opt_sar: build the scenes of the division file that are on disk (a "
        "deliberate subset) instead of refusing when some are missing",
    )
    args = parser.parse_args(argv)
    if args.allow_missing_scenes and args.name != "whu_opt_sar":
        parser.error("--allow_missing_scenes applies to whu_opt_sar only")
    return errors.run(lambda: build_and_report(args))


def build_and_report(args) -> int:
    builder = build.build(
        args.name,
        args.data_dir,
        args.manual_dir,
        config=args.config,
        overwrite=args.overwrite,
        check_georeference=not args.accept_misaligned,
        **({"allow_missing_scenes": True} if args.allow_missing_scenes else {}),
    )
    for split, info in builder.info.splits.items():
        print(f"{split}: {info.num_examples} examples")
    print(f"built {builder.info.full_name} in {builder.data_dir}")
    return 0


def run() -> None:
    """The entry point (``asanet-build-dataset``, ``scripts/build_dataset.py``); exits."""
    sys.exit(main())


if __name__ == "__main__":
    run()
