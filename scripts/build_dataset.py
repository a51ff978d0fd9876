"""Build one of the RGB-SAR TFDS datasets without TensorFlow (same result as `tfds build`).

    python scripts/build_dataset.py pie_rgb_sar --data_dir ~/tensorflow_datasets \
        --manual_dir /data/PIE-RGB-SAR
    python scripts/build_dataset.py synthetic_rgb_sar --data_dir data --config tiny
"""

from __future__ import annotations

import argparse
import sys

from asanet_jax.data import build, io


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=build.BUILDERS)
    parser.add_argument("--data_dir", required=True, help="where TFDS datasets are written")
    parser.add_argument("--manual_dir", help="the extracted source dataset")
    parser.add_argument("--config", help="builder config (synthetic_rgb_sar: default, tiny)")
    args = parser.parse_args(argv)
    try:
        builder = build.build(args.name, args.data_dir, args.manual_dir, config=args.config)
    except (io.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, info in builder.info.splits.items():
        print(f"{split}: {info.num_examples} examples")
    print(f"built {builder.info.full_name} in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
