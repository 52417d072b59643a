"""Simulated device fleets for ``benchmarks/ota.py``, spread over device-host processes.

A real fleet is N machines, each with its own CPU. Simulating 200 devices as 400 threads
(one paho network loop + one update loop each) in one Python process measures the GIL
instead: the worker CPU per device came out ~40x what one install costs alone (9 ms), and
starved devices asked for chunks they had not yet read, which the coordinator then
republished to the whole fleet. So both the protocol devices and the plain baseline
subscribers run in ``hosts`` worker processes (spawned, so nothing of the parent's torch
state is inherited), the same layout for both, and report to the parent over a queue.

A protocol device is the agent that ships: one :class:`~edge.agent.Agent` per device on its
own thread, configured from the device's enrollment bundle as ``fedge edge run --bundle``
does, with a firmware profile (``firmware_configs/``). Baseline subscribers connect with
identities of their own (``base-…``): the broker binds the client id to the certificate
(rule B3), so a subscriber holding a device's certificate would take over its session.

- ``("ready", host, n)`` once the host's devices are connected (and, for the baseline,
  subscribed): the parent starts its clock only after every host is ready;
- ``("done", device_id, t)`` with ``t`` from ``time.monotonic()`` (one system-wide clock on
  Linux, so comparable across processes) when a device has committed the update
  (protocol) or holds every chunk (baseline);
- ``("downloaded", device_id, t)`` (protocol) when the last missing chunk arrives, i.e.
  the transfer is over and the install begins;
- ``("stats", host, {...})`` when told to stop: bytes and messages received, bytes
  published, the CPU the agents spent handling deployment messages and the host
  process's CPU time from ready to stop.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import resource
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware_configs" / "thermostat_sensor.toml"

__all__ = ["FleetSpec", "SimulatedFleet"]

Mode = Literal["protocol", "baseline"]


@dataclass(frozen=True)
class FleetSpec:
    """What every device host needs to know (picklable: it crosses a process boundary).

    Attributes:
        mode: ``protocol`` = real :class:`~edge.agent.Agent` per device;
            ``baseline`` = plain paho subscriber per identity on ``chunk_prefix + "+"``.
        bundles: device (or baseline identity) id → enrollment bundle directory.
        port: The fleet broker's TLS port on 127.0.0.1.
        work: Root of the devices' state directories (protocol mode).
        probation: ``litert`` (the agent's own: LiteRT load + smoke test) or ``header``.
        quiet_s: Updater resend quiet period.
        hardware_id: The devices' hardware id (their profile's, as enrolled).
        max_model_bytes: The devices' profile limit.
        chunk_prefix, chunk_count: Baseline topic prefix and number of chunks.
    """

    mode: Mode
    bundles: dict[str, str]
    port: int
    work: str = ""
    probation: str = "litert"
    quiet_s: float = 2.0
    hardware_id: str = "hw-bench"
    max_model_bytes: int = 8_000_000
    chunk_prefix: str = ""
    chunk_count: int = 0


def _header_check(path: Path, _version: str) -> None:
    """``header`` probation: only check the TFLite file identifier."""
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer")


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rx_bytes: int = 0
    rx_msgs: int = 0
    tx_bytes: int = 0
    worker_cpu_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "rx_bytes": self.rx_bytes,
            "rx_msgs": self.rx_msgs,
            "tx_bytes": self.tx_bytes,
            "worker_cpu_s": self.worker_cpu_s,
        }


def _profile(spec: FleetSpec) -> Any:
    """The thermostat firmware profile, for the benchmark fleet's hardware and model."""
    from shared.precision import Precision
    from shared.profiles import profile_from_toml

    firmware = profile_from_toml(FIRMWARE.read_text(), source=str(FIRMWARE))
    return firmware.model_copy(
        update={
            "hardware_id": spec.hardware_id,
            "groups": (),
            "max_model_bytes": spec.max_model_bytes,
            "precisions": (Precision.INT8,),
        }
    )


def _protocol_devices(spec: FleetSpec, events: Any, counters: _Counters) -> list[Any]:
    """One real Agent per device on its own thread, counting what it receives, sends, spends."""
    from edge.agent import Agent, AgentConfig
    from shared.protocol.messages import UpdateOutcome

    class BenchAgent(Agent):
        def _handle_raw(self, topic: str, payload: bytes) -> None:
            with counters.lock:
                counters.rx_bytes += len(payload)
                counters.rx_msgs += 1
            updater = self.updater
            missing = updater.missing() if updater is not None else ()
            if len(missing) == 1 and topic.rsplit("/", 1)[-1] == str(missing[0]):
                # The last chunk it lacks: the transfer is over, the install starts.
                events.put(("downloaded", self.config.device_id, time.monotonic()))
            started = time.thread_time()  # CPU of this device's agent thread only
            try:
                super()._handle_raw(topic, payload)
            finally:
                spent = time.thread_time() - started
                with counters.lock:
                    counters.worker_cpu_s += spent

        def _activate_model(self, path: Path, version: str) -> None:
            if spec.probation == "header":
                _header_check(path, version)
            else:
                super()._activate_model(path, version)

    profile = _profile(spec)
    agents = []
    for device_id, bundle in spec.bundles.items():

        def on_update(report: Any, d: str = device_id) -> None:
            if report.outcome is UpdateOutcome.COMMITTED:
                events.put(("done", d, time.monotonic()))

        config = AgentConfig(
            device_id=device_id,
            broker_url=f"mqtts://127.0.0.1:{spec.port}",
            profile=profile,
            state_dir=Path(spec.work) / "devices" / device_id,
            http_port=None,
            reconnect_max_s=2.0,
            update_quiet_s=spec.quiet_s,
        ).with_bundle(Path(bundle))
        agent = BenchAgent(config, on_update=on_update)
        link_publish = agent.link.publish  # the agent's statuses and the updater's requests

        def counting_publish(
            topic: str,
            payload: bytes,
            *,
            qos: int = 1,
            retain: bool = False,
            _p: Any = link_publish,
        ) -> int | None:
            with counters.lock:
                counters.tx_bytes += len(payload)
            return _p(topic, payload, qos=qos, retain=retain)  # type: ignore[no-any-return]

        agent.link.publish = counting_publish  # type: ignore[method-assign]
        agents.append(_HostedAgent(agent))
    for a in agents:
        a.start()
    deadline = time.monotonic() + 120
    while not all(a.agent.link.is_connected() for a in agents):
        if any(not a.thread.is_alive() for a in agents):
            raise RuntimeError("an agent stopped while connecting")
        if time.monotonic() > deadline:
            raise RuntimeError("devices did not connect")
        time.sleep(0.05)
    return agents


class _HostedAgent:
    """An agent and the thread that runs it (``fedge edge run`` runs it on its main thread)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.thread = threading.Thread(
            target=agent.run, name=f"agent-{agent.config.device_id}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.agent.request_stop()

    def join(self) -> None:
        self.thread.join(15)
        if self.thread.is_alive():
            print(f"agent {self.agent.config.device_id} did not stop", file=sys.stderr)


def _baseline_devices(spec: FleetSpec, events: Any, counters: _Counters) -> list[Any]:
    """One plain paho subscriber per identity (TLS client certificate, QoS 1), nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    subscribed = threading.Semaphore(0)
    subs = []
    for device_id, bundle_dir in spec.bundles.items():
        bundle = Path(bundle_dir)
        c = mqtt.Client(  # the broker sets client id := certificate CN anyway (rule B3)
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        c.tls_set(
            ca_certs=str(bundle / "ca.crt"),
            certfile=str(bundle / "client.crt"),
            keyfile=str(bundle / "client.key"),
            cert_reqs=ssl.CERT_REQUIRED,
        )
        c.username_pw_set(device_id, (bundle / "broker.password").read_text().strip())
        c.connect_timeout = 15.0
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        have: set[int] = set()

        def on_connect(cl: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
            cl.subscribe(spec.chunk_prefix + "+", qos=1)

        def on_subscribe(*_a: Any) -> None:
            subscribed.release()

        def on_message(
            _c: Any, _u: Any, msg: Any, d: str = device_id, have: set[int] = have
        ) -> None:
            index = int(msg.topic.rsplit("/", 1)[1])
            with counters.lock:
                counters.rx_bytes += len(msg.payload)
                counters.rx_msgs += 1
            if index not in have:
                have.add(index)
                if len(have) == spec.chunk_count:
                    events.put(("done", d, time.monotonic()))

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect_async("127.0.0.1", spec.port, keepalive=30)
        c.loop_start()
        subs.append(c)
    for i in range(len(subs)):
        if not subscribed.acquire(timeout=120):
            raise RuntimeError(f"baseline subscribers did not subscribe ({i}/{len(subs)})")
    return subs


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _host_main(host: int, spec: FleetSpec, events: Any, stop: Any) -> None:
    """Entry point of one device-host process."""
    logging.basicConfig(level=logging.ERROR)
    counters = _Counters()
    try:
        if spec.mode == "protocol":
            clients = _protocol_devices(spec, events, counters)
        else:
            clients = _baseline_devices(spec, events, counters)
    except Exception as exc:  # the parent turns this into a clear failure
        events.put(("error", host, f"{type(exc).__name__}: {exc}"))
        return
    cpu_at_ready = _process_cpu_s()
    events.put(("ready", host, len(clients)))
    stop.wait()
    if spec.mode == "protocol":
        for c in clients:
            c.stop()  # all at once: each waits for its offline status to be acknowledged
        for c in clients:
            c.join()
    else:
        for c in clients:
            c.disconnect()
            c.loop_stop()
    # CPU from "ready" to "stop": the measured window, not imports and TLS handshakes.
    stats = counters.as_dict() | {"process_cpu_s": _process_cpu_s() - cpu_at_ready}
    events.put(("stats", host, stats))


class SimulatedFleet:
    """``len(spec.bundles)`` devices over ``hosts`` processes; a context manager.

    ``with SimulatedFleet(spec, hosts=8) as fleet: fleet.wait_ready(); t0 = ...;
    times = fleet.wait_done(timeout)``, then :attr:`stats` after the ``with`` block.
    """

    def __init__(self, spec: FleetSpec, *, hosts: int) -> None:
        ctx = mp.get_context("spawn")  # never fork a parent that holds torch/paho threads
        self._events: Any = ctx.Queue()
        self._stop = ctx.Event()
        ids = list(spec.bundles)
        hosts = max(1, min(hosts, len(ids)))
        self.hosts = hosts
        self._procs = []
        for h in range(hosts):
            part = {d: spec.bundles[d] for d in ids[h::hosts]}
            sub = FleetSpec(**{**spec.__dict__, "bundles": part})
            self._procs.append(
                ctx.Process(
                    target=_host_main,
                    args=(h, sub, self._events, self._stop),
                    name=f"ota-host-{h}",
                    daemon=True,
                )
            )
        self.size = len(ids)
        self.done: dict[str, float] = {}
        self.downloaded: dict[str, float] = {}
        self.stats: dict[str, float] = {}

    def __enter__(self) -> SimulatedFleet:
        for p in self._procs:
            p.start()
        return self

    def _next(self, timeout: float) -> tuple[Any, ...]:
        event = self._events.get(timeout=timeout)
        if event[0] == "error":
            raise RuntimeError(f"device host {event[1]} failed: {event[2]}")
        self._record(event)
        return tuple(event)

    def _record(self, event: tuple[Any, ...]) -> None:
        if event[0] == "done":
            self.done.setdefault(event[1], event[2])
        elif event[0] == "downloaded":
            self.downloaded.setdefault(event[1], event[2])

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until every host's devices are connected (and subscribed)."""
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < self.hosts:
            try:
                event = self._next(max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"only {ready}/{self.hosts} device hosts ready") from None
            ready += event[0] == "ready"

    def wait_done(self, timeout: float) -> dict[str, float]:
        """Completion time per device (``time.monotonic()``), until all or ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.done) < self.size and time.monotonic() < deadline:
            try:
                self._next(min(0.5, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
        return dict(self.done)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        got = 0
        deadline = time.monotonic() + 60
        while got < self.hosts and time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    break
                continue
            self._record(event)
            if event[0] == "stats":
                got += 1
                for k, v in event[2].items():
                    self.stats[k] = self.stats.get(k, 0) + v
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


def _litert_smoke(path: Path, _version: str) -> None:
    """The agent's ``litert`` probation alone: LiteRT load, checks and one smoke inference."""
    from edge.inference import Predictor

    Predictor(num_threads=1).load(path, _version)


def measure_device_work(
    artifact: bytes, *, devices: int = 20, passes: int = 3, probation: str = "litert"
) -> dict[str, float]:
    """CPU one device spends on one install, alone: no broker, no threads, no other process.

    ``devices`` real :class:`~edge.updater.engine.Updater` instances (own state dirs on
    tmpfs, the product's checks, slot writes with fsync, ``probation``) are fed the
    manifest and every chunk of one release of ``artifact``, interleaved across devices
    as a broker delivers them. Returns the median over ``passes`` of process CPU per
    device, by phase. ``devices × total / cores`` is what simulating that many devices
    costs this host before any network, broker, publisher or thread overhead.
    """
    import shutil
    import statistics
    import tempfile

    from edge.updater.engine import Updater
    from shared.crypto import PrivateKey
    from shared.protocol.codec import encode_chunk
    from shared.protocol.codec import encode_message as encode_delivery
    from shared.protocol.messages import ManifestMessage
    from tests.helpers.release import NOW, Fleet

    class _Link:
        def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            pass

        def subscribe(self, topic: str) -> None:
            pass

        def unsubscribe(self, topic: str) -> None:
            pass

    ids = [f"d{i}" for i in range(devices)]
    fleet = Fleet(devices={d: PrivateKey.generate() for d in ids})
    release = fleet.build(artifact, 1, chunk_size=65536)
    envelope = fleet.sign(release.manifest)
    manifests = [
        encode_delivery(ManifestMessage(device_id=d, sent_at=NOW, envelope=envelope)) for d in ids
    ]
    chunks = [encode_chunk(c) for c in release.chunks]
    activate = _header_check if probation == "header" else _litert_smoke
    shm = Path("/dev/shm")
    rows: list[tuple[float, float, float]] = []
    for _ in range(passes):
        root = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
        try:
            updaters = [
                Updater(
                    device_id=d,
                    hardware_id="hw-a",
                    box_key=fleet.devices[d],
                    trust=fleet.trust(),
                    max_model_bytes=8_000_000,
                    precisions=("int8",),
                    state_dir=root / d,
                    link=_Link(),
                    activate=activate,
                    now=lambda: NOW,
                )
                for d in ids
            ]
            t0 = time.process_time()
            for u, m in zip(updaters, manifests, strict=True):
                u.handle_manifest(m)
            t1 = time.process_time()
            for c in chunks[:-1]:
                for u in updaters:
                    u.handle_chunk(c)
            t2 = time.process_time()
            for u in updaters:
                u.handle_chunk(chunks[-1])  # completes the download: install + probation
            t3 = time.process_time()
            if not all(u.state.active is not None for u in updaters):
                raise RuntimeError("a device did not commit in the device-work measurement")
            rows.append((t1 - t0, t2 - t1, t3 - t2))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def per_device_ms(k: int) -> float:
        return round(1000 * statistics.median(r[k] for r in rows) / devices, 2)

    out = {
        "manifest_ms": per_device_ms(0),
        "chunks_ms": per_device_ms(1),
        "install_and_probation_ms": per_device_ms(2),
    }
    out["total_ms"] = round(sum(out.values()), 2)
    return out
