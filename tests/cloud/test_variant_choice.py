"""Measured variant choice (``docs/protocol.md`` §15, rules C1-C5) — fast, with fakes.

The chooser alone (pure), then the publisher on an in-memory broker with fake devices that
time trials from a per-hardware-class table: two classes whose measurements disagree each
get their own fastest variant, a profile pin wins, an excluded variant is never sent (we
read every manifest that went out on the wire), a silent class falls back to the static
preference, and measurements persist in the database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud.deployment.link import Incoming
from cloud.deployment.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.deployment.variants import Basis, Limits, Variant, choose, class_medians
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.artifacts import Purpose
from shared.artifacts.manifest import Manifest, manifest_from_bytes
from shared.errors import ConfigError
from shared.precision import Precision
from shared.protocol import topics
from shared.protocol.codec import decode_message_as, encode_message
from shared.protocol.messages import (
    DeviceState,
    ManifestMessage,
    ServingInfo,
    StatusMessage,
    UpdateInfo,
    UpdateOutcome,
    VariantReport,
    VariantTiming,
)
from tests.fakes.broker import InMemoryBroker, device_acl

FILES = {  # precision -> model file (sizes differ: ties go to the smaller file)
    "int8": b"i8" * 300,
    "float16": b"f16" * 400,
    "float32": b"f32" * 800,
}
#: What each hardware class measures (microseconds): the classes disagree.
SPEED = {
    "hw-avx2": {"int8": 65.0, "float16": 41.0, "float32": 38.0},
    "hw-vnni": {"int8": 20.0, "float16": 45.0, "float32": 40.0},
}

V_INT8 = Variant("int8", "a" * 64, 600)
V_F16 = Variant("float16", "b" * 64, 1200)
V_F32 = Variant("float32", "c" * 64, 2400)


# --- the chooser alone -----------------------------------------------------------------


def test_two_classes_whose_measurements_disagree_get_their_own_fastest() -> None:
    variants = [V_INT8, V_F16, V_F32]
    for hw, expected in (("hw-avx2", "float32"), ("hw-vnni", "int8")):
        choice = choose(variants, Limits(), SPEED[hw])
        assert choice.variant is not None and choice.variant.precision == expected
        assert choice.basis is Basis.MEASURED and choice.median_us == SPEED[hw][expected]


def test_a_pin_wins_over_the_measurements() -> None:
    choice = choose([V_INT8, V_F16, V_F32], Limits(pin="float16"), SPEED["hw-avx2"])
    assert choice.variant == V_F16 and choice.basis is Basis.PINNED
    unavailable = choose([V_INT8, V_F32], Limits(pin="float16"), {})
    assert (unavailable.variant, unavailable.reason) == (None, "pinned_precision_unavailable")


def test_excluded_variants_are_never_chosen_even_when_fastest() -> None:
    limits = Limits(accepts=frozenset({"int8", "float16"}), max_model_bytes=1000)
    choice = choose([V_INT8, V_F16, V_F32], limits, SPEED["hw-avx2"])
    assert choice.variant == V_INT8  # float32 (fastest) not accepted, float16 too large
    assert choice.excluded == {"float32": "precision_not_accepted", "float16": "model_too_large"}
    failed = choose([V_INT8, V_F32], Limits(failed=frozenset({"float32"})), SPEED["hw-avx2"])
    assert failed.variant == V_INT8 and failed.excluded == {"float32": "trial_failed"}
    nothing = choose([V_F32], Limits(accepts=frozenset({"int8"})), {})
    assert (nothing.variant, nothing.reason) == (None, "precision_not_accepted")


def test_tie_goes_to_the_smaller_file_and_nothing_measured_is_static() -> None:
    tie = choose([V_F32, V_F16], Limits(), {"float32": 40.0, "float16": 40.0})
    assert tie.variant == V_F16
    static = choose([V_F32, V_F16, V_INT8], Limits(), {})
    assert static.variant == V_INT8 and static.basis is Basis.STATIC
    assert "static preference" in static.explain()


def test_class_median_counts_each_device_once() -> None:
    medians = class_medians(
        [("d1", "int8", 10.0), ("d1", "int8", 11.0), ("d2", "int8", 30.0), ("d3", "int8", 12.0)]
    )
    assert medians == {"int8": 12.0}  # d1's newest (11), d2 30, d3 12 -> median 12


# --- the publisher with fake devices -------------------------------------------------------


@dataclass
class FakeDevice:
    """Answers manifests like a real updater: trial → a timing, shadow → held, install."""

    broker: InMemoryBroker
    device_id: str
    hardware_id: str
    accepts: tuple[str, ...] = ("int8", "float16", "float32")
    pin: str | None = None
    trials: bool = True  # False: silent on trials (a device that never answers them)
    refuse_trials: bool = False  # True: no timer, refuses trials like a real updater
    received: list[Manifest] = field(default_factory=list)
    serving: ServingInfo | None = None
    candidate: ServingInfo | None = None
    timings: list[VariantTiming] = field(default_factory=list)

    def start(self) -> None:
        client = self.broker.connect(self.device_id)
        client.on_message = self._on_message
        client.subscribe(topics.device_manifest(self.device_id))
        self._send()

    def _send(self, update: UpdateInfo | None = None) -> None:
        status = StatusMessage(
            device_id=self.device_id,
            sent_at=time.time(),
            state=DeviceState.ONLINE,
            hardware_id=self.hardware_id,
            serving=self.serving,
            candidate=self.candidate,
            floor=self.serving.version if self.serving else 0,
            accepts=tuple(Precision(p) for p in self.accepts),
            pin_precision=Precision(self.pin) if self.pin else None,
            update=update,
            variants=VariantReport(
                hardware_id="forged-class",  # the payload's class is never believed
                cpu_features=("avx2",),
                timings=tuple(self.timings),
            )
            if self.timings
            else None,
        )
        topic = topics.device_status(self.device_id)
        self.broker.publish(self.device_id, topic, encode_message(status), retain=True)

    def _on_message(self, msg: Incoming) -> None:
        envelope = decode_message_as(msg.payload, ManifestMessage).envelope
        m = manifest_from_bytes(envelope.payload_bytes())
        self.received.append(m)
        info = ServingInfo(
            model_id=m.model_id,
            version=m.version,
            artifact_id=m.artifact_id,
            sha256=m.sha256,
            precision=m.precision,
            slot="b",
        )
        if m.purpose is Purpose.TRIAL:
            if not self.trials:
                return
            if self.refuse_trials:
                self._send(
                    UpdateInfo(
                        version=m.version,
                        outcome=UpdateOutcome.FAILED,
                        reason="trial_not_supported",
                        artifact_id=m.artifact_id,
                    )
                )
                return
            median = SPEED[self.hardware_id][str(m.precision)]
            self.timings.append(
                VariantTiming(
                    model_id=m.model_id,
                    version=m.version,
                    artifact_id=m.artifact_id,
                    precision=m.precision,
                    threads=1,
                    runs=100,
                    median_us=median,
                    p99_us=median * 1.3,
                )
            )
            outcome = UpdateOutcome.TRIALED
        elif m.purpose is Purpose.SHADOW:
            self.candidate, outcome = info, UpdateOutcome.HELD
        else:
            self.serving, self.candidate, outcome = info, None, UpdateOutcome.COMMITTED
        self._send(UpdateInfo(version=m.version, outcome=outcome, artifact_id=m.artifact_id))


@dataclass
class World:
    home: KeyHome
    registry: Registry
    broker: InMemoryBroker
    fleet: FleetStore
    devices: dict[str, FakeDevice] = field(default_factory=dict)

    def device(self, device_id: str, hardware_id: str, **kw: object) -> FakeDevice:
        self.home.enroll_device(device_id, hardware_id=hardware_id)
        device = FakeDevice(self.broker, device_id, hardware_id, **kw)  # type: ignore[arg-type]
        device.start()
        self.devices[device_id] = device
        return device

    def publish(self, ref: str, purpose: str = "install", **kw: object) -> PublishReport:
        def connect(subscriptions: list[str]):  # type: ignore[no-untyped-def]
            return self.broker.connect("fedge-coordinator", subscriptions)

        pub = Publisher(
            self.registry, self.home, host="-", port=0, connect=connect, fleet=self.fleet, **kw
        )  # type: ignore[arg-type]
        targets = select_devices(self.home, sorted(self.devices), None)
        return pub.publish(ref, targets, timeout_s=2.0, discover_s=0.2, purpose=purpose)


@pytest.fixture()
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    registry = Registry(database_url, tmp_path / "store")
    registry.create_version(
        "cnn",
        spec={},
        source=VersionSource.TRAINED,
        artifacts=[
            NewArtifact("tflite", p, data, ArtifactStatus.APPROVED) for p, data in FILES.items()
        ],
    )
    yield World(home, registry, InMemoryBroker(device_acl), FleetStore(registry.engine))
    registry.close()


def installs(device: FakeDevice) -> list[str]:
    return [str(m.precision) for m in device.received if m.purpose is Purpose.INSTALL]


def test_each_hardware_class_ends_on_its_own_fastest_variant(world: World) -> None:
    avx = [world.device(f"avx-{i}", "hw-avx2") for i in range(2)]
    vnni = world.device("vnni-0", "hw-vnni")
    report = world.publish("cnn@1")
    assert {d: r.outcome for d, r in report.devices.items()} == dict.fromkeys(
        report.devices, Outcome.COMMITTED
    )
    for dev in avx:
        assert installs(dev) == ["float32"] and dev.serving is not None
        assert report.devices[dev.device_id].choice["basis"] == "measured"  # type: ignore[index]
    assert installs(vnni) == ["int8"]
    trialled = sorted(str(m.precision) for m in avx[0].received if m.purpose is Purpose.TRIAL)
    assert trialled == ["float16", "float32", "int8"]  # every eligible variant, once
    # Persisted under the *enrolled* class, not the payload's "forged-class".
    rows = world.fleet.variant_measurements("hw-avx2", "cnn", 1)
    assert {(r.device_id, r.precision) for r in rows} == {
        (d.device_id, p) for d in avx for p in FILES
    }
    assert not world.fleet.variant_measurements("forged-class", "cnn", 1)
    assert {r.size_bytes for r in rows if r.precision == "int8"} == {len(FILES["int8"])}

    # The next publish of the same version to a new device of the class: measured, no trials.
    late = world.device("avx-9", "hw-avx2")
    again = world.publish("cnn@1")
    assert [m.purpose for m in late.received] == [Purpose.INSTALL]
    assert installs(late) == ["float32"] and again.devices["avx-9"].outcome is Outcome.COMMITTED


def test_trials_go_to_a_bounded_sample_of_the_class(world: World) -> None:
    devs = [world.device(f"avx-{i}", "hw-avx2") for i in range(4)]
    world.publish("cnn@1", trial_sample=2)
    sampled = [d.device_id for d in devs if any(m.purpose is Purpose.TRIAL for m in d.received)]
    assert sampled == ["avx-0", "avx-1"]
    assert all(installs(d) == ["float32"] for d in devs)  # the rest use the sample's timings


def test_a_profile_pin_wins_and_is_not_trialled(world: World) -> None:
    pinned = world.device("avx-pin", "hw-avx2", pin="float16")
    report = world.publish("cnn@1")
    assert [(m.purpose, str(m.precision)) for m in pinned.received] == [
        (Purpose.INSTALL, "float16")
    ]
    assert report.devices["avx-pin"].choice["basis"] == "pinned"  # type: ignore[index]


def test_an_excluded_variant_is_never_sent(world: World) -> None:
    narrow = world.device("avx-narrow", "hw-avx2", accepts=("int8", "float16"))
    report = world.publish("cnn@1")
    on_wire = {str(m.precision) for m in narrow.received}
    assert "float32" not in on_wire and on_wire == {"int8", "float16"}  # trials included
    assert installs(narrow) == ["float16"]  # the fastest it may take on hw-avx2
    choice = report.devices["avx-narrow"].choice
    assert choice is not None and choice["excluded"] == {"float32": "precision_not_accepted"}


def test_a_class_whose_trials_time_out_falls_back_to_the_static_preference(
    world: World,
) -> None:
    mute = world.device("avx-mute", "hw-avx2", trials=False)
    report = world.publish("cnn@1", trial_timeout_s=0.3)
    assert installs(mute) == ["int8"]  # static preference
    choice = report.devices["avx-mute"].choice
    assert choice is not None and (choice["basis"], choice["note"]) == ("static", "trial_timeout")
    assert report.trials["avx-mute"]["timed_out"] == ["int8"]  # one round, then no more


def test_a_device_that_cannot_time_falls_back_at_once_and_says_why(world: World) -> None:
    dev = world.device("avx-old", "hw-avx2", refuse_trials=True)
    report = world.publish("cnn@1")
    assert [m.purpose for m in dev.received] == [Purpose.TRIAL, Purpose.INSTALL]  # one ask
    assert installs(dev) == ["int8"] and report.devices["avx-old"].outcome is Outcome.COMMITTED
    choice = report.devices["avx-old"].choice
    assert choice is not None and choice["note"] == "trial_not_supported"
    assert report.trials["avx-old"]["refused"] == "trial_not_supported"


def test_an_explicit_trial_times_every_eligible_variant_and_installs_nothing(
    world: World,
) -> None:
    devs = [world.device(f"avx-{i}", "hw-avx2") for i in range(4)]  # all, not a sample
    report = world.publish("cnn@1", purpose="trial", trial_sample=1)
    assert all(r.outcome is Outcome.COMMITTED for r in report.devices.values())
    for dev in devs:
        assert {str(m.precision) for m in dev.received} == set(FILES)
        assert installs(dev) == [] and dev.serving is None


def test_an_unknown_purpose_is_refused(world: World) -> None:
    world.device("avx-0", "hw-avx2")
    with pytest.raises(ConfigError) as info:
        world.publish("cnn@1", purpose="deploy")
    assert info.value.code == "invalid_argument"
    assert not world.devices["avx-0"].received


def test_shadow_then_install_reports_by_purpose(world: World) -> None:
    dev = world.device("vnni-0", "hw-vnni")
    shadow = world.publish("cnn@1", purpose="shadow")
    assert shadow.devices["vnni-0"].outcome is Outcome.COMMITTED and shadow.purpose == "shadow"
    assert dev.candidate is not None and dev.serving is None
    assert dev.candidate.precision is Precision.INT8  # the measured fastest, as a candidate
    install = world.publish("cnn@1")
    assert install.devices["vnni-0"].outcome is Outcome.COMMITTED
    assert dev.serving is not None and dev.serving.sha256 == dev.received[-1].sha256


# --- the store on both backends -------------------------------------------------------------


def _timing(artifact_id: str, median: float, precision: str = "int8") -> VariantTiming:
    return VariantTiming(
        model_id="cnn",
        version=1,
        artifact_id=artifact_id,
        precision=Precision(precision),
        threads=2,
        runs=10,
        median_us=median,
        p99_us=median * 2,
    )


def test_store_keeps_the_newest_timing_per_device_and_artifact(world: World) -> None:
    store = world.fleet
    aid = "1" * 32
    store.record_variant_timings(
        "d1", hardware_id="hw-a", timings=[_timing(aid, 50.0)], sizes={aid: 600}, now=1.0
    )
    store.record_variant_timings(
        "d1", hardware_id="hw-a", timings=[_timing(aid, 40.0), _timing("2" * 32, 9.0)], now=2.0
    )
    store.record_variant_timings("d2", hardware_id="hw-b", timings=[_timing(aid, 70.0)], now=3.0)
    rows = store.variant_measurements("hw-a", "cnn", 1)
    assert [(r.device_id, r.artifact_id, r.median_us) for r in rows] == [
        ("d1", aid, 40.0),
        ("d1", "2" * 32, 9.0),
    ]
    first = next(r for r in rows if r.artifact_id == aid)
    assert first.size_bytes == 600 and first.measured_at == 2.0  # a known size is kept
    assert [r.device_id for r in store.variant_measurements("hw-b", "cnn")] == ["d2"]
    assert store.variant_measurements("hw-a", "cnn", 2) == []


def test_publish_cli_output_names_the_variant_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from cloud.cli.publish import _finish
    from cloud.deployment.report import DeviceResult

    measured = choose(
        [V_INT8, V_F32],
        Limits(accepts=frozenset({"int8", "float32"})),
        {"int8": 65.0, "float32": 38.0},
    )
    static = choose([V_INT8, V_F16], Limits(max_model_bytes=1000), {}, note="trial_timeout")
    report = PublishReport(
        "cnn@1",
        "",
        {
            "a": DeviceResult("a", Outcome.COMMITTED, choice=measured.to_dict()),
            "b": DeviceResult("b", Outcome.COMMITTED, choice=static.to_dict()),
        },
    )
    _finish(report, json_out=False)
    out = capsys.readouterr().out
    assert "float32: measured fastest on this hardware class (median 38.0 us)" in out
    assert "int8: static preference, nothing measured (trial_timeout)" in out
    assert "excluded float16 (model_too_large)" in out
    with pytest.raises(typer.Exit):
        _finish(PublishReport("cnn@1", "", {"c": DeviceResult("c", Outcome.FAILED)}), json_out=True)
    assert '"choice"' in capsys.readouterr().out
