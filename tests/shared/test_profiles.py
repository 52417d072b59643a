"""Device profiles: the shipped ones are valid; invalid ones name the offending field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import ProfileError
from shared.profiles import DeviceProfile, Precision, profile_from_mapping, profile_from_toml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "firmware_configs").glob("*.toml"))

VALID = {
    "name": "t",
    "device_class": "sensor",
    "hardware_id": "hw-1",
    "inference_threads": 2,
    "ram_mb": 256,
    "storage_mb": 64,
    "max_model_bytes": 1_000_000,
    "precisions": ["int8"],
    "telemetry_interval_s": 30.0,
}


def test_at_least_five_profiles_ship() -> None:
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_is_valid_and_documented(path: Path) -> None:
    text = path.read_text()
    profile = profile_from_toml(text, source=path.name)
    assert profile.description, "every shipped profile describes its device"
    assert text.lstrip().startswith("#"), "every shipped profile starts with a comment"


def test_shipped_profiles_have_distinct_names_and_hardware() -> None:
    profiles = [profile_from_toml(p.read_text()) for p in SHIPPED]
    assert len({p.name for p in profiles}) == len(profiles)
    assert len({p.hardware_id for p in profiles}) == len(profiles)
    assert any(p.trains for p in profiles) and any(not p.trains for p in profiles)


def test_valid_mapping_parses_with_types() -> None:
    profile = profile_from_mapping(dict(VALID))
    assert profile.precisions == (Precision.INT8,)
    assert profile.trains is False
    assert profile.groups == ()


def test_integer_interval_is_accepted() -> None:
    assert profile_from_mapping({**VALID, "telemetry_interval_s": 30}).telemetry_interval_s == 30


def test_profile_is_frozen() -> None:
    profile = profile_from_mapping(dict(VALID))
    with pytest.raises(ValidationError):
        profile.inference_threads = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inference_threads": "2"}, "inference_threads"),  # strict: no string coercion
        ({"inference_threads": 0}, "inference_threads"),
        ({"trains": 1}, "trains"),  # strict: no int -> bool
        ({"ram_mb": 4}, "ram_mb"),
        ({"hardware_id": "HW/+#"}, "hardware_id"),  # would break topics
        ({"precisions": []}, "precisions"),
        ({"precisions": ["int4"]}, "precisions.0"),
        ({"precisions": ["int8", "int8"]}, "precisions"),
        ({"runtime": "onnx"}, "runtime"),
        ({"telemetry_interval_s": -1.0}, "telemetry_interval_s"),
        ({"groups": ["ok", "Not Ok"]}, "groups.1"),
        ({"colour": "red"}, "colour"),  # typo'd / unknown field
        ({"max_model_bytes": 40_000_000}, "max_model_bytes"),  # two slots exceed storage
        ({"trains": True}, "trains"),  # training needs float32
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_invalid_field_is_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(ProfileError) as info:
        profile_from_mapping({**VALID, **change}, source="dev.toml")
    assert f"field '{field}'" in info.value.message
    assert "dev.toml" in info.value.message
    assert info.value.code == "invalid_profile"


def test_missing_field_is_named() -> None:
    data = dict(VALID)
    del data["hardware_id"]
    with pytest.raises(ProfileError, match="field 'hardware_id': Field required"):
        profile_from_mapping(data)


def test_bad_toml_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match="not valid TOML"):
        profile_from_toml("name = ")


def test_non_table_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match="expected a table"):
        profile_from_mapping(["not", "a", "table"])


def test_round_trips_through_json() -> None:
    profile = profile_from_toml(SHIPPED[0].read_text())
    again = DeviceProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    assert tomllib.loads(SHIPPED[0].read_text())["name"] == profile.name
