"""The deployment plane, cloud side: build and sign releases, publish them, send commands.

* :mod:`~cloud.deployment.release` — plans: releases built and manifests signed (pure);
* :mod:`~cloud.deployment.session` — one publish in flight, given plans, a transport, a clock;
* :mod:`~cloud.deployment.evidence` — device messages attributed by topic, never by payload;
* :mod:`~cloud.deployment.publisher` — discovery, per-device choice, the session;
* :mod:`~cloud.deployment.commands` — signed commands and their answers;
* :mod:`~cloud.deployment.link` — the coordinator's MQTT connection (the transport);
* :mod:`~cloud.deployment.report` — what a publish did.
"""
