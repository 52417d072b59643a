"""The deployment plane, cloud side: build and sign releases, publish them, send commands.

* :mod:`~cloud.deployment.release` — plans: releases built and manifests signed (pure);
* :mod:`~cloud.deployment.session` — one publish in flight, given plans, a transport, a clock;
* :mod:`~cloud.deployment.evidence` — device messages attributed by topic, never by payload;
* :mod:`~cloud.deployment.publisher` — one publish, phase by phase (orchestration);
* :mod:`~cloud.deployment.discovery` — each target's status, and rules Q1/Q2 from it;
* :mod:`~cloud.deployment.trials` — which variants to time, and the trials (C5);
* :mod:`~cloud.deployment.planning` — per-device choice and delta base, the signed plans;
* :mod:`~cloud.deployment.commands` — signed commands and their answers;
* :mod:`~cloud.deployment.link` — the coordinator's MQTT connection (the transport);
* :mod:`~cloud.deployment.report` — what a publish did.
"""
