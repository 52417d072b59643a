"""Shadow evaluation: answers never change, agreement/MAD are right, failures are contained.

Serving and candidate models are real ``.tflite`` files run in LiteRT. The misbehaving
candidates (raising, hanging, returning garbage) are small runner objects: a real model
cannot be made to hang on demand, and the evaluator treats both the same way.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.agent import Agent, AgentConfig
from edge.inference import LoadedModel, Predictor, ShadowConfig, SocketClient, SocketServer
from edge.inference.frames import encode_request
from edge.inference.shadow import ShadowEvaluator
from shared.errors import ConfigError
from shared.precision import Precision
from shared.profiles import DeviceProfile
from shared.protocol.codec import decode_message
from shared.protocol.messages import ServingInfo, ShadowReport, TelemetryMessage
from tests.helpers.models import INPUT_SHAPE, BuiltModels
from tests.helpers.mosquitto import MosquittoBroker
from tests.helpers.mqtt import Received, Recorder
from tests.helpers.release import Fleet

EAGER = ShadowConfig(sample_rate=1.0, max_samples_per_s=1e9, queue_size=10_000, nice=0)


def _info(path: Path, version: int = 2) -> ServingInfo:
    return ServingInfo(
        model_id="cnn",
        version=version,
        artifact_id="0" * 32,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        precision=Precision.INT8,
        slot="b",
    )


def _inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(INPUT_SHAPE, dtype=np.float32) for _ in range(n)]


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    """Poll until ``predicate()``; a condition, not a timing assert (the cap only fails)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


class _Raises:
    calls = 0

    def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        self.calls += 1
        raise RuntimeError("candidate crashed")


class _Hangs:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        self.entered.set()
        self.release.wait()  # never set by the hang test: the worker is abandoned
        return np.zeros((1, 10), np.float32)


class _Garbage:
    def __init__(self, out: np.ndarray) -> None:
        self.out = out

    def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        return self.out


class _Wrapped:
    """A real model with its outputs transformed (a permuted-label or rescaled model)."""

    def __init__(self, model: LoadedModel, transform: Any) -> None:
        self.model, self.transform = model, transform

    def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        out: np.ndarray = self.transform(self.model.run(x))
        return out


@pytest.fixture()
def serving(models: BuiltModels) -> Iterator[Predictor]:
    predictor = Predictor()
    predictor.load(models.int8_a, "1")
    yield predictor
    predictor.stop_shadow()


# --- the caller's answer ----------------------------------------------------------------


@pytest.mark.parametrize("candidate", ["real", "raises", "hangs", "nan", "wrong_shape"])
def test_shadow_never_changes_an_answer(
    serving: Predictor, models: BuiltModels, candidate: str
) -> None:
    xs = _inputs(40)
    baseline = [serving.predict(x).tobytes() for x in xs]
    runner: Any = {
        "real": models.float_a,
        "raises": _Raises(),
        "hangs": _Hangs(),
        "nan": _Garbage(np.full((1, 10), np.nan, np.float32)),
        "wrong_shape": _Garbage(np.zeros((1, 3), np.float32)),
    }[candidate]
    config = ShadowConfig(
        sample_rate=1.0, max_samples_per_s=1e9, queue_size=10_000, deadline_s=0.2, nice=0
    )
    shadow = serving.start_shadow(runner, _info(models.float_a), config=config)
    answers = [serving.predict(x).tobytes() for x in xs]
    assert answers == baseline  # byte for byte, whatever the candidate does
    if candidate == "hangs":
        _wait(lambda: shadow.failed)
        answers = [serving.predict(x).tobytes() for x in xs]  # served while it is stuck
        assert answers == baseline
        runner.release.set()
    _wait(lambda: shadow._queue.empty() and shadow._busy_since is None)
    report = shadow.report(serving_version=1)
    if candidate == "real":
        assert report.samples == 40 and report.errors == 0
    elif candidate == "hangs":
        assert report.timeouts == 1 and report.samples == 0
        assert report.dropped >= 39  # queued or offered after the abandonment
    else:
        assert report.errors == 40 and report.samples == 0


def test_socket_answers_are_byte_identical_with_shadow_on(
    serving: Predictor, models: BuiltModels
) -> None:
    d = Path(tempfile.mkdtemp(prefix="fsh", dir="/tmp"))
    srv = SocketServer(serving, d / "s.sock")
    srv.start()
    try:
        frames = [encode_request(x) for x in _inputs(30, seed=3)]
        with SocketClient(srv.path) as client:
            off = [client.send_raw(f) for f in frames]
            shadow = serving.start_shadow(_Raises(), _info(models.int8_a), config=EAGER)
            on = [client.send_raw(f) for f in frames]
        assert on == off
        _wait(lambda: shadow.report(serving_version=1, reset=False).errors == 30)
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


# --- what is measured -----------------------------------------------------------------------


def test_agreement_of_a_model_with_itself_is_one(serving: Predictor, models: BuiltModels) -> None:
    shadow = serving.start_shadow(models.int8_a, _info(models.int8_a), config=EAGER)
    for x in _inputs(25):
        serving.predict(x)
    _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 25)
    report = shadow.report(serving_version=1)
    assert report.task == "classifier"
    assert report.agreement == 1.0 and report.mean_abs_diff is None
    assert report.candidate_latency.count == report.serving_latency.count == 25
    assert report.candidate_latency.p50_ms > 0 and report.serving_latency.p50_ms > 0
    assert report.serving_version == 1 and report.candidate.version == 2
    # The window was reset: the next one starts empty.
    assert shadow.report(serving_version=1).samples == 0


def test_agreement_with_a_permuted_label_model_is_zero(
    serving: Predictor, models: BuiltModels
) -> None:
    model = LoadedModel(models.int8_a.read_bytes(), "p", num_threads=1)
    shift = np.roll(np.arange(10), 1)  # a derangement: no class keeps its index
    runner = _Wrapped(model, lambda out: out[..., shift])
    xs = _inputs(25)
    tops = [int(np.argmax(serving.predict(x))) for x in xs]
    assert len(set(tops)) >= 1
    shadow = serving.start_shadow(runner, _info(models.int8_a), config=EAGER)
    for x in xs:
        serving.predict(x)
    _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 25)
    # With ties broken by the first maximum, a shifted argmax never equals the original
    # unless two logits tie exactly; count what the permutation really gives.
    expected = sum(
        int(np.argmax(o[..., shift])) == int(np.argmax(o)) for o in (serving.predict(x) for x in xs)
    )
    assert shadow.report(serving_version=1).agreement == expected / 25
    assert expected <= 2


def test_mean_abs_diff_for_a_regressor(serving: Predictor, models: BuiltModels) -> None:
    model = LoadedModel(models.int8_a.read_bytes(), "r", num_threads=1)
    xs = _inputs(10)
    outs = [serving.predict(x) for x in xs]
    expected = float(np.mean([np.mean(np.abs(o * 2 - o)) for o in outs]))
    shadow = serving.start_shadow(
        _Wrapped(model, lambda out: out * 2), _info(models.int8_a), config=EAGER, task="regressor"
    )
    for x in xs:
        serving.predict(x)
    _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 10)
    report = shadow.report(serving_version=1)
    assert report.agreement is None
    assert report.mean_abs_diff == pytest.approx(expected, rel=1e-5)


def test_a_model_against_itself_as_regressor_has_zero_diff(
    serving: Predictor, models: BuiltModels
) -> None:
    shadow = serving.start_shadow(
        models.int8_a, _info(models.int8_a), config=EAGER, task="regressor"
    )
    for x in _inputs(5):
        serving.predict(x)
    _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 5)
    assert shadow.report(serving_version=1).mean_abs_diff == 0.0


# --- bounds -------------------------------------------------------------------------------


def test_a_full_queue_drops_and_counts(serving: Predictor, models: BuiltModels) -> None:
    runner = _Hangs()
    config = ShadowConfig(
        sample_rate=1.0, max_samples_per_s=1e9, queue_size=2, deadline_s=60.0, nice=0
    )
    shadow = serving.start_shadow(runner, _info(models.int8_a), config=config)
    serving.predict(_inputs(1)[0])
    assert runner.entered.wait(10)  # the worker is busy with the first sample
    for x in _inputs(10):
        serving.predict(x)
    report = shadow.report(serving_version=1)
    assert report.dropped == 8  # 2 wait in the queue, the rest were dropped
    runner.release.set()


def test_the_rate_cap_bounds_samples(serving: Predictor, models: BuiltModels) -> None:
    config = ShadowConfig(sample_rate=1.0, max_samples_per_s=5.0, nice=0)
    shadow = serving.start_shadow(models.int8_a, _info(models.int8_a), config=config)
    start = time.monotonic()
    for x in _inputs(200):
        serving.predict(x)
    elapsed = time.monotonic() - start
    _wait(lambda: shadow._queue.empty() and shadow._busy_since is None)
    report = shadow.report(serving_version=1)
    # One second of burst, then the refill over however long the loop took.
    assert 1 <= report.samples + report.dropped <= 5 + int(elapsed * 5) + 1


def test_sample_rate_zero_never_samples(serving: Predictor, models: BuiltModels) -> None:
    shadow = serving.start_shadow(
        _Raises(), _info(models.int8_a), config=ShadowConfig(sample_rate=0.0)
    )
    for x in _inputs(50):
        serving.predict(x)
    report = shadow.report(serving_version=1)
    assert report.samples == report.errors == report.dropped == 0


def test_a_new_candidate_after_a_hang_gets_a_fresh_worker(
    serving: Predictor, models: BuiltModels
) -> None:
    hung = _Hangs()
    config = ShadowConfig(
        sample_rate=1.0, max_samples_per_s=1e9, queue_size=100, deadline_s=0.2, nice=0
    )
    first = serving.start_shadow(hung, _info(models.int8_a), config=config)
    serving.predict(_inputs(1)[0])
    _wait(lambda: first.failed)
    second = serving.start_shadow(models.int8_a, _info(models.int8_a, 3), config=config)
    for x in _inputs(5):
        serving.predict(x)
    _wait(lambda: second.report(serving_version=1, reset=False).samples == 5)
    assert second.report(serving_version=1).agreement == 1.0
    hung.release.set()


def test_stop_shadow_ends_reports(serving: Predictor, models: BuiltModels) -> None:
    serving.start_shadow(models.int8_a, _info(models.int8_a), config=EAGER)
    assert serving.shadow_report(serving_version=1) is not None
    stopped = serving.stop_shadow()
    assert stopped is not None and serving.shadow is None
    assert serving.shadow_report(serving_version=1) is None


def test_a_candidate_that_cannot_load_changes_nothing(
    serving: Predictor, tmp_path: Path, models: BuiltModels
) -> None:
    from shared.errors import ModelLoadError

    bad = tmp_path / "b.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        serving.start_shadow(bad, _info(models.int8_a))
    assert serving.shadow is None
    assert serving.active is not None and serving.active.version == "1"


@pytest.mark.parametrize(
    "kw",
    [
        {"sample_rate": 1.5},
        {"sample_rate": -0.1},
        {"max_samples_per_s": 0},
        {"queue_size": 0},
        {"deadline_s": 0},
        {"nice": 25},
    ],
)
def test_config_is_validated(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ShadowConfig(**kw)  # type: ignore[arg-type]


def test_evaluator_task_defaults_from_output_shape(models: BuiltModels) -> None:
    info = _info(models.int8_a)
    assert ShadowEvaluator(_Raises(), info, output_shape=(1, 10)).task == "classifier"
    assert ShadowEvaluator(_Raises(), info, output_shape=(1, 1)).task == "regressor"


# --- through the agent ------------------------------------------------------------------------


def test_agent_telemetry_carries_the_shadow_report(
    broker: MosquittoBroker, profile: DeviceProfile, models: BuiltModels, tmp_path: Path
) -> None:
    """A held candidate (as the updater hands it over) shows up in the telemetry windows."""
    release = Fleet().build(models.int8_b.read_bytes(), 7, precision=Precision.INT8)
    manifest = release.manifest
    slot_file = tmp_path / "slots" / "b.tflite"
    slot_file.parent.mkdir()
    shutil.copyfile(models.int8_b, slot_file)
    sock_dir = Path(tempfile.mkdtemp(prefix="fsa", dir="/tmp"))
    config = AgentConfig(
        device_id="dev-s",
        broker_url=broker.url,
        profile=profile,
        state_dir=tmp_path / "state",
        model_path=models.int8_a,
        model_version="v1",
        socket_path=sock_dir / "s.sock",
        shadow=EAGER,
    )
    agent = Agent(config)
    recorder = Recorder(broker.host, broker.port, "fedge/v1/devices/dev-s/telemetry")
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        _wait(lambda: agent.socket_server is not None and agent.socket_server.path.exists())
        agent.shadow_candidate(slot_file, manifest)
        with SocketClient(config.socket_path) as client:  # type: ignore[arg-type]
            for x in _inputs(20):
                assert client.predict(x)[1] == "v1"  # answered by the serving model

        def reports(msgs: list[Received]) -> list[ShadowReport]:
            out = []
            for r in msgs:
                t = decode_message(r.payload)
                if isinstance(t, TelemetryMessage) and t.shadow is not None:
                    out.append(t.shadow)
            return out

        msgs = recorder.wait_for(lambda m: sum(s.samples for s in reports(m)) >= 20)
        shadow = next(s for s in reports(msgs) if s.samples)
        assert shadow.candidate.version == 7 and shadow.candidate.slot == "b"
        assert shadow.candidate.artifact_id == manifest.artifact_id
        assert shadow.candidate.sha256 == manifest.sha256
        assert shadow.task == "classifier" and shadow.agreement is not None
        assert shadow.serving_version == 0  # a file-loaded model has no manifest version
        assert shadow.candidate_latency.count == shadow.samples
        agent.shadow_candidate(None, None)  # the updater dropped it
        assert agent.predictor.shadow is None
        timing = agent.trial_variant(models.int8_b, manifest)
        assert timing.artifact_id == manifest.artifact_id and timing.version == 7
        assert timing.threads == profile.inference_threads and timing.runs >= 1
    finally:
        agent.request_stop()
        runner.join(timeout=20)
        recorder.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert not runner.is_alive()


def test_the_sample_is_a_copy_of_the_callers_buffer(
    serving: Predictor, models: BuiltModels
) -> None:
    """The socket server reuses its read buffer for the next request: a queued sample must
    not change when the caller's buffer does."""

    class _Records:
        def __init__(self) -> None:
            self.go = threading.Event()
            self.seen: list[np.ndarray] = []

        def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
            self.go.wait(10)
            self.seen.append(np.array(x, copy=True))
            return np.zeros((1, 10), np.float32)

    runner = _Records()
    serving.start_shadow(runner, _info(models.int8_a), config=EAGER)
    x = _inputs(1)[0]
    original = x.copy()
    serving.predict(x)
    x[...] = 0.0  # the caller (or the socket buffer) moves on
    runner.go.set()
    _wait(lambda: len(runner.seen) == 1)
    np.testing.assert_array_equal(runner.seen[0], original)


# --- the updater's callbacks, wired to real inference (no broker) ---------------------------


def test_a_signed_shadow_manifest_starts_evaluation_and_an_install_ends_it(
    models: BuiltModels, profile: DeviceProfile, tmp_path: Path
) -> None:
    """Updater (real verification, real slots) → ``on_shadow`` → LiteRT candidate → report;
    a ``trial`` manifest → ``on_trial`` → a real timing."""
    from edge.inference.local import LocalInference
    from edge.updater import Updater
    from shared.artifacts import Purpose
    from shared.protocol.codec import encode_chunk
    from shared.protocol.messages import UpdateOutcome
    from tests.helpers.release import HW, NOW
    from tests.helpers.updater import FakeLink, manifest_payload

    fleet = Fleet()
    predictor = Predictor.from_profile(profile)
    local = LocalInference(predictor, profile, shadow=EAGER, trial_budget_s=0.1)
    reports: list[Any] = []

    def activate(path: Path, version: str) -> None:  # probation: load + smoke test
        predictor.load(path, version)

    updater = Updater(
        device_id="dev-a",
        hardware_id=HW,
        box_key=fleet.devices["dev-a"],
        trust=fleet.trust(),
        max_model_bytes=profile.max_model_bytes,
        precisions=("int8", "float32"),
        state_dir=tmp_path / "updater",
        link=FakeLink(),
        activate=activate,
        on_status=reports.append,
        now=lambda: float(NOW),
        quiet_s=2.0,
        on_trial=local.trial_variant,
        on_shadow=local.shadow_candidate,
    )

    def deliver(data: bytes, version: int, purpose: Purpose) -> Any:
        release = fleet.build(data, version, purpose=purpose, model_id="cnn")
        updater.handle_manifest(manifest_payload(fleet, release))
        for chunk in release.chunks:
            updater.handle_chunk(encode_chunk(chunk))
        return release.manifest

    deliver(models.int8_a.read_bytes(), 1, Purpose.INSTALL)
    assert reports[-1].outcome is UpdateOutcome.COMMITTED and predictor.shadow is None
    held = deliver(models.int8_b.read_bytes(), 2, Purpose.SHADOW)
    shadow = predictor.shadow
    assert shadow is not None
    assert shadow.info.artifact_id == held.artifact_id and shadow.info.version == 2
    assert predictor.active is not None and predictor.active.version == "1"  # still serving
    xs = _inputs(15)
    for x in xs:
        predictor.predict(x)
    _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 15)
    report = local.shadow_report(serving_version=1)
    assert report is not None and report.candidate.sha256 == held.sha256
    trial = deliver(models.float_a.read_bytes(), 3, Purpose.TRIAL)
    assert reports[-1].outcome is UpdateOutcome.TRIALED
    timing = updater.timings[-1]
    assert timing.artifact_id == trial.artifact_id and timing.precision == trial.precision
    assert timing.threads == profile.inference_threads and timing.runs >= 1
    assert 0 < timing.median_us <= timing.p99_us
    deliver(models.int8_b.read_bytes(), 2, Purpose.INSTALL)  # promote the held candidate
    assert reports[-1].outcome is UpdateOutcome.COMMITTED
    assert predictor.active is not None and predictor.active.version == "2"
    assert predictor.shadow is None  # the candidate is gone: its evaluation ended


def test_a_failing_sampler_stops_the_evaluation_not_the_request(
    serving: Predictor, models: BuiltModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = serving.start_shadow(models.int8_a, _info(models.int8_a), config=EAGER)

    def broken(*args: object) -> None:
        raise MemoryError("no room for the sample")

    monkeypatch.setattr(shadow, "offer", broken)
    x = _inputs(1)[0]
    expected = Predictor()
    expected.load(models.int8_a, "1")
    assert serving.predict(x).tobytes() == expected.predict(x).tobytes()
    assert serving.shadow is None


@pytest.mark.slow
def test_agreement_with_a_converted_permuted_label_model_is_zero(
    models: BuiltModels, tmp_path: Path
) -> None:
    """A real second .tflite: the float CNN with its output rows rotated (every class moved)."""
    import torch

    from tests.helpers.models import NUM_CLASSES, convert_float, torch_cnn

    model = torch_cnn(0)  # the same weights as models.float_a
    last = model[-1]
    shift = torch.roll(torch.arange(NUM_CLASSES), 1)
    with torch.no_grad():
        last.weight.copy_(last.weight[shift])
        last.bias.copy_(last.bias[shift])
    permuted = convert_float(model, INPUT_SHAPE, tmp_path / "b.tflite")
    serving = Predictor()
    serving.load(models.float_a, "1")
    shadow = serving.start_shadow(permuted, _info(permuted), config=EAGER)
    try:
        for x in _inputs(20):
            serving.predict(x)
        _wait(lambda: shadow.report(serving_version=1, reset=False).samples == 20)
        report = shadow.report(serving_version=1)
        assert report.agreement == 0.0 and report.errors == 0
        # The same file against itself: full agreement (the pair is what differs).
        again = serving.start_shadow(models.float_a, _info(models.float_a), config=EAGER)
        for x in _inputs(20):
            serving.predict(x)
        _wait(lambda: again.report(serving_version=1, reset=False).samples == 20)
        assert again.report(serving_version=1).agreement == 1.0
    finally:
        serving.stop_shadow()
