"""The recipe in one place: config-file arguments (`recipe.parse_arg`), each dataset's
augmentation and TTA in `config.data`, command-line overrides reaching the training
augmentation, the official TTA of `scripts/eval.py --tta`, the dataset registry, and
old dataset records that still carry the moved settings."""

import dataclasses
import pathlib
import types

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from asanet_jax import evaluation
from asanet_jax.convert import cli as convert_cli
from asanet_jax.data import build, pipeline, specs, transforms
from asanet_jax.data import config as data_config
from asanet_jax.train import recipe, trainer

REPO = pathlib.Path(__file__).resolve().parents[1]

# The official mmseg dataset configs of github whu-pzhang/ASANet, as docs/design.md
# (section 6) records them; written out here, not read from our code.
SIX = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
OFFICIAL = {
    "pie_rgb_sar": dict(
        crop=(256, 256), scale=(1024, 256), flips=(0.5, 0.5), tta=(0.75, 1.0, 1.25)
    ),
    "ddhr_sk": dict(crop=(256, 256), scale=(1024, 256), flips=(0.0, 0.0), tta=SIX),
    "whu_opt_sar": dict(crop=(512, 512), scale=(2048, 512), flips=(0.5, 0.5), tta=SIX),
}
CONFIG_FILES = {"pie_rgb_sar": "pie", "ddhr_sk": "ddhr", "whu_opt_sar": "whu"}


def load(name, arg=None):
    return recipe.load(f"{REPO}/configs/{name}.py" + (f":{arg}" if arg is not None else ""))


def parse_command_line(*argv):
    """`scripts/train.py`'s --config flag, parsed from a command line."""
    argv = ["train.py", *map(str, argv)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


# --- recipe.parse_arg ---------------------------------------------------------------------

ABLATION_SPEC = dict(variant=("sfm_cfm", ("sfm_cfm", "cfm", "sar_only")), runlocal=False)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (None, dict(variant="sfm_cfm", runlocal=False)),
        ("", dict(variant="sfm_cfm", runlocal=False)),
        ("runlocal", dict(variant="sfm_cfm", runlocal=True)),
        ("sar_only", dict(variant="sar_only", runlocal=False)),
        ("sar_only,runlocal", dict(variant="sar_only", runlocal=True)),
        ("runlocal,sar_only", dict(variant="sar_only", runlocal=True)),
        ("variant=cfm,runlocal=true", dict(variant="cfm", runlocal=True)),
        (" cfm , runlocal=False ,", dict(variant="cfm", runlocal=False)),
    ],
)
def test_parse_arg_reads_flags_positional_words_and_key_values(arg, expected):
    got = recipe.parse_arg(arg, "configs/x.py", **ABLATION_SPEC)
    assert got.to_dict() == expected


def test_parse_arg_types_values_by_their_defaults():
    got = recipe.parse_arg(
        "steps=12,lr=0.5,name=abc,fast=no", "x", steps=3, lr=1.0, name="z", fast=True
    )
    assert got.to_dict() == dict(steps=12, lr=0.5, name="abc", fast=False)
    assert isinstance(got.steps, int) and isinstance(got.lr, float)
    # The first option that is not a flag takes a bare word.
    assert recipe.parse_arg("7", "x", local=False, steps=3).steps == 7


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("foo", "configs/pie.py: unknown variant 'foo' in 'foo'"),
        ("official_flips,foo", "configs/pie.py: unknown variant 'foo' in 'official_flips,foo'"),
        ("steps=3", "configs/pie.py: unknown option 'steps' in 'steps=3'"),
        ("runlocal=maybe", "configs/pie.py: runlocal='maybe': expected true or false"),
        ("runlocal,runlocal", "configs/pie.py: runlocal given twice in 'runlocal,runlocal'"),
    ],
)
def test_parse_arg_errors_name_the_file_the_word_and_what_is_accepted(arg, message):
    with pytest.raises(ValueError) as e:
        recipe.parse_arg(arg, "configs/pie.py", official_flips=False, runlocal=False)
    assert str(e.value).startswith(message), e.value
    assert str(e.value).endswith("accepted, comma-separated: official_flips, runlocal")
    assert "\n" not in str(e.value)


def test_parse_arg_errors_for_choices_and_numbers():
    with pytest.raises(ValueError, match=r"^x: unknown variant 'sum' in 'sum,runlocal'; acc"):
        recipe.parse_arg("sum,runlocal", "x", **ABLATION_SPEC)
    with pytest.raises(ValueError, match=r"sfm_cfm \| cfm \| sar_only \(the variant, or vari"):
        recipe.parse_arg("variant=sum", "x", **ABLATION_SPEC)
    with pytest.raises(ValueError, match=r"^x: variant given twice in 'cfm,sar_only'"):
        recipe.parse_arg("cfm,sar_only", "x", **ABLATION_SPEC)
    with pytest.raises(ValueError, match=r"^x: steps='2.5': expected an integer; .* steps=<int>"):
        recipe.parse_arg("steps=2.5", "x", steps=3)
    with pytest.raises(ValueError, match=r"^x: unknown variant 'a' in 'a'; nothing \(the file"):
        recipe.parse_arg("a", "x")


# --- the config files ----------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["official_flips,runlocal", "runlocal,official_flips"])
def test_pie_official_flips_combines_with_runlocal(arg):
    config = load("pie", arg)
    local, official = load("pie", "runlocal"), load("pie", "official_flips")
    assert config.data.augment.flip_sar is False and official.data.augment.flip_sar is False
    assert load("pie").data.augment.flip_sar is True
    assert config.train.steps == 4 and config.model.backbone == "atto"
    assert official.train.steps == 80_000 and official.model.backbone == "tiny"
    # runlocal changes nothing else: official_flips,runlocal is runlocal with SAR unflipped.
    local.data.augment.flip_sar = False
    assert config.to_dict() == local.to_dict()


def test_ablation_variants_combine_with_runlocal_and_keep_their_old_spellings():
    config = load("ablations", "sar_only,runlocal")
    assert config.model.modalities == "sar" and config.model.fusion == "none"
    assert config.train.steps == 4
    assert load("ablations", "optical_only").model.modalities == "optical"
    assert load("ablations", "variant=sum").model.fusion == "sum"
    assert load("ablations").to_dict() == load("ablations", "sfm_cfm").to_dict()
    assert load("ablations", "runlocal").model.fusion == "cfm"


def test_demo_runlocal_trains_on_the_tiny_synthetic_tiles():
    config, full = load("demo", "runlocal"), load("demo")
    assert config.data.tfds_config == "tiny" and config.train.steps == 4
    assert config.data.augment.crop_size == (64, 64) and config.data.augment.scale == (256, 64)
    assert full.data.augment.crop_size == (128, 128) and full.data.augment.scale == (512, 128)
    assert recipe.demo_config("runlocal").to_dict() == config.to_dict()


@pytest.mark.parametrize("name", ["pie", "ddhr", "whu", "folder", "demo", "ablations"])
def test_every_config_file_refuses_an_unknown_word_naming_itself(name):
    with pytest.raises(ValueError) as e:
        load(name, "runlocal,bogus")
    assert str(e.value).startswith(f"configs/{name}.py: unknown variant 'bogus'"), e.value
    assert "runlocal" in str(e.value).split("accepted, comma-separated: ")[1]


def test_the_config_flag_takes_a_combined_variant():
    # As scripts/train.py reads it (its work directory: runs/pie_official_flips_runlocal).
    config = parse_command_line(f"--config={REPO}/configs/pie.py:official_flips,runlocal")
    assert config.data.augment.flip_sar is False and config.train.steps == 4


# --- each dataset's official augmentation and TTA ------------------------------------------


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_each_dataset_config_has_the_official_augmentation_and_tta(dataset):
    official = OFFICIAL[dataset]
    config = load(CONFIG_FILES[dataset])
    assert transforms.Augment.from_config(config.data) == transforms.Augment(
        crop_size=official["crop"],
        scale=official["scale"],
        ratio_range=(0.5, 2.0),
        cat_max_ratio=0.75,
        crop_tries=10,
        hflip_prob=official["flips"][0],
        vflip_prob=official["flips"][1],
        flip_sar=True,
    )
    assert tuple(config.data.tta.ratios) == official["tta"] and config.data.tta.flip is True
    # The dataset's default augmentation (the input pipeline's) is the same.
    assert transforms.Augment.for_spec(specs.BUILTIN[dataset]) == transforms.Augment.from_config(
        config.data
    )


def test_a_command_line_override_of_an_augmentation_field_reaches_augment():
    config = parse_command_line(
        f"--config={REPO}/configs/whu.py",
        "--config.data.augment.crop_size=(384, 320)",
        "--config.data.augment.hflip_prob=0",
        "--config.data.augment.flip_sar=False",
        "--config.data.tta.ratios=(1.0, 2.0)",
        "--config.data.tta.flip=False",
    )
    aug = transforms.Augment.from_config(config.data)
    assert aug.crop_size == (384, 320) and aug.hflip_prob == 0.0 and aug.flip_sar is False
    assert aug.scale == (2048, 512)  # the rest stays WHU's
    settings = evaluation.Settings.from_config(config.data, tta=True)
    assert settings.tta_for("whu_opt_sar") == ((1.0, 2.0), False)


def test_training_builds_its_augmentation_from_the_command_line_config(tmp_path, monkeypatch):
    config = parse_command_line(
        f"--config={REPO}/configs/demo.py:runlocal",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.data.augment.crop_size=(48, 40)",
        "--config.data.augment.ratio_range=(1.0, 1.5)",
        "--config.data.augment.flip_sar=False",
    )
    seen = {}

    class Reached(Exception):
        pass

    def train_dataset(source, batch_size, seed, augment, **kwargs):
        seen["augment"] = augment
        raise Reached

    monkeypatch.setattr(pipeline, "train_dataset", train_dataset)
    with pytest.raises(Reached):
        trainer.train(config, tmp_path / "run")
    assert seen["augment"] == transforms.Augment(
        crop_size=(48, 40), scale=(256, 64), ratio_range=(1.0, 1.5), flip_sar=False
    )


def test_augment_refuses_impossible_settings_naming_the_field():
    config = load("pie")
    config.data.augment.crop_size = (0, 256)
    with pytest.raises(ValueError, match=r"config.data.augment.crop_size=\(0, 256\): expected"):
        transforms.Augment.from_config(config.data)
    with pytest.raises(ValueError, match=r"config.data.augment.hflip_prob=1.5: expected 0 to 1"):
        transforms.Augment(hflip_prob=1.5)


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_eval_tta_flag_uses_the_official_ratios_and_flip(dataset, monkeypatch):
    """scripts/eval.py --tta: Settings(mode, window, stride, tta) without a config."""
    spec = specs.BUILTIN[dataset]
    settings = evaluation.Settings("whole", None, None, True)
    assert settings.tta_for(dataset) == (OFFICIAL[dataset]["tta"], True)
    # ... and evaluate() runs the TTA with them.
    calls = []

    def tta_probabilities(infer, optical, sar, spec, ratios, flip=True):
        calls.append((ratios, flip))
        return np.zeros((*optical.shape[:2], spec.num_classes), np.float32)

    monkeypatch.setattr(evaluation, "tta_probabilities", tta_probabilities)
    rng = np.random.default_rng(0)
    records = [
        {
            "optical": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
            "sar": rng.integers(0, 255, (8, 8, 1), dtype=np.uint8),
            "label": np.zeros((8, 8), np.uint8),
        }
    ] * 2
    source = build.Source(records, spec, dataset, "val")
    predictor = types.SimpleNamespace(config=types.SimpleNamespace(num_classes=spec.num_classes))
    evaluation.evaluate(predictor, source, settings, progress=False)
    assert calls == [(OFFICIAL[dataset]["tta"], True)] * 2


def test_datasets_without_an_official_recipe_get_pie_settings():
    assert data_config.tta_defaults("my_fields") == {"ratios": (0.75, 1.0, 1.25), "flip": True}
    assert data_config.augment_defaults("rgb_sar_folder") == data_config.augment_defaults(
        "pie_rgb_sar"
    )
    config = load("folder")
    assert transforms.Augment.from_config(config.data) == transforms.Augment()


# --- the registry and old records ----------------------------------------------------------


def test_dataset_lists_derive_from_the_registry():
    assert build.BUILDERS == specs.BUILDERS
    assert convert_cli.OFFICIAL_DATASETS == specs.OFFICIAL == tuple(OFFICIAL)
    assert set(data_config.OFFICIAL_DATA) == set(specs.OFFICIAL)
    assert set(specs.BUILDERS) == {*specs.BUILTIN, specs.FOLDER}
    for name in specs.BUILDERS:  # each has its builder folder (installed by setup.py)
        assert (REPO / "tfds_builders" / name / f"{name}_dataset_builder.py").is_file(), name


def test_records_written_before_the_move_still_read():
    """model.json and built datasets of earlier versions carry the augmentation and TTA
    fields; they are ignored."""
    old = {
        **specs.WHU_OPT_SAR.to_dict(),
        "crop_size": [512, 512],
        "train_scale": [2048, 512],
        "hflip_prob": 0.5,
        "vflip_prob": 0.5,
        "tta_ratios": list(SIX),
    }
    assert specs.DatasetSpec.from_dict(old) == specs.WHU_OPT_SAR
    assert not set(specs.MOVED_TO_RECIPE) & {f.name for f in dataclasses.fields(specs.DatasetSpec)}
    with pytest.raises(ValueError, match="unknown dataset spec fields"):
        specs.DatasetSpec.from_dict({**old, "bogus": 1})
