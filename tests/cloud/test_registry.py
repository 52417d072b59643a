"""The registry on SQLite and PostgreSQL: lineage, atomic writes, deployability, blob integrity."""

from __future__ import annotations

import hashlib

import pytest

from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.errors import ArtifactStoreError, NotDeployableError, NotFoundError, RegistryError

SPEC = {"arch": "mlp", "input_shape": [4], "num_classes": 3}


def _blobs(reg: Registry) -> set[str]:
    root = reg.store.root / "sha256"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _torch(data: bytes = b"weights") -> NewArtifact:
    return NewArtifact("torch", "fp32", data, ArtifactStatus.SOURCE)


def test_versions_number_up_and_keep_lineage(registry: Registry) -> None:
    v1 = registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    v2 = registry.create_version(
        "m",
        spec=SPEC,
        source=VersionSource.FEDERATED,
        source_ref="run-7/round-3",
        parent=v1.ref,
        artifacts=[_torch(b"other")],
    )
    assert (v1.ref, v2.ref) == ("m@1", "m@2")
    got = registry.get_version("m")  # latest
    assert got.ref == "m@2" and got.parent == "m@1"
    assert got.source == "federated" and got.source_ref == "run-7/round-3"
    assert registry.get_version("m@1").parent is None
    assert [v.ref for v in registry.list_versions()] == ["m@1", "m@2"]
    art = got.artifact("torch", "fp32")
    assert art.sha256 == hashlib.sha256(b"other").hexdigest()
    assert registry.read_artifact(art) == b"other"


def test_identical_bytes_are_stored_once(registry: Registry) -> None:
    registry.create_version("a", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    registry.create_version("b", spec=SPEC, source=VersionSource.IMPORTED, artifacts=[_torch()])
    assert _blobs(registry) == {hashlib.sha256(b"weights").hexdigest()}


def test_failed_write_leaves_no_version_and_no_orphan_blob(registry: Registry) -> None:
    registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    before = _blobs(registry)
    # Two artifacts with the same (format, precision): the second fails after the first
    # blob was already written to the store.
    with pytest.raises(RegistryError, match="already has"):
        registry.create_version(
            "m",
            spec=SPEC,
            source=VersionSource.TRAINED,
            artifacts=[_torch(b"new-blob"), _torch(b"another")],
        )
    assert [v.ref for v in registry.list_versions("m")] == ["m@1"]
    assert _blobs(registry) == before


def test_failed_add_keeps_existing_artifacts(registry: Registry) -> None:
    v = registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    ok = NewArtifact("tflite", "int8", b"int8-model", ArtifactStatus.APPROVED)
    with pytest.raises(RegistryError):
        registry.add_artifacts(v.ref, [ok, _torch(b"dup")], metrics={"x": 1})
    again = registry.get_version(v.ref)
    assert [a.precision for a in again.artifacts] == ["fp32"]
    assert "x" not in again.metrics
    assert hashlib.sha256(b"int8-model").hexdigest() not in _blobs(registry)


def test_rejected_artifacts_are_never_deployable(registry: Registry) -> None:
    v = registry.create_version(
        "m",
        spec=SPEC,
        source=VersionSource.TRAINED,
        artifacts=[
            _torch(),
            NewArtifact("tflite", "int8", b"i8", ArtifactStatus.REJECTED, "drop 3.1 > 1.0"),
            NewArtifact("tflite", "float32", b"f32-bigger", ArtifactStatus.APPROVED),
        ],
    )
    assert registry.deployable_artifact(v.ref).precision == "float32"
    with pytest.raises(NotDeployableError, match=r"drop 3\.1 > 1\.0"):
        registry.deployable_artifact(v.ref, precision="int8")


def test_version_without_tflite_is_not_deployable(registry: Registry) -> None:
    v = registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    with pytest.raises(NotDeployableError, match="none quantized"):
        registry.deployable_artifact(v.ref)


@pytest.mark.parametrize(
    "ref", ["nope", "nope@1", "m@9", "m@x", "@1", "m\x00@1", "m\x00", "a b@1", "m/..@1"]
)
def test_unknown_references(registry: Registry, ref: str) -> None:
    registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    with pytest.raises(NotFoundError):
        registry.get_version(ref)


def test_corrupt_blob_is_detected(registry: Registry) -> None:
    v = registry.create_version("m", spec=SPEC, source=VersionSource.TRAINED, artifacts=[_torch()])
    art = v.artifact("torch", "fp32")
    registry.store.path_for(art.sha256).write_bytes(b"tampered")
    with pytest.raises(ArtifactStoreError, match="corrupt"):
        registry.read_artifact(art)
    registry.store.path_for(art.sha256).unlink()
    with pytest.raises(ArtifactStoreError, match="missing"):
        registry.read_artifact(art)


def test_bad_database_url_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RegistryError, match="cannot open registry database"):
        Registry("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path)
