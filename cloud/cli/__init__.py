"""The coordinator's command groups, one module each, one error format and one JSON style.

* :mod:`~cloud.cli.common` — ``cli_errors`` (``error (<code>): <reason>`` on stderr, exit 2;
  Ctrl-C exit 130), ``emit``/``emit_json`` (one JSON document on stdout), ``JsonFlag``;
* :mod:`~cloud.cli.pipeline` — ``fedge cloud train|quantize``, ``fedge models …``;
* :mod:`~cloud.cli.keys` — ``fedge keys …``; :mod:`~cloud.cli.broker` — ``fedge broker …``;
* :mod:`~cloud.cli.publish` — ``fedge cloud publish``; :mod:`~cloud.cli.commands` —
  ``fedge cloud rollback|command``; :mod:`~cloud.cli.federate` — ``fedge cloud federate``.

Heavy dependencies are imported inside the commands, so ``--help`` stays fast.
"""
