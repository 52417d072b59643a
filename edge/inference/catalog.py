"""Several models served by name: a camera runs a detector *and* a classifier.

A :class:`ModelSet` maps names to :class:`~edge.inference.Predictor` objects. One of them
is the *default*: a request that names no model (``POST /v1/infer``, a socket frame
without the model-name flag) goes to it, so single-model clients keep working unchanged.
The default is also reachable by its own name (for the agent: the updater-managed model's
``model_id``) and always as ``default``.

Each predictor hot-swaps on its own; the set itself is fixed once the servers start (the
agent builds it at start-up), so a lookup is a plain dictionary read and takes no lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from edge.inference.frames import MODEL_NAME_RE
from edge.inference.predictor import Predictor
from shared.errors import ConfigError

__all__ = ["DEFAULT_MODEL_NAME", "ModelSet", "check_model_name"]

DEFAULT_MODEL_NAME = "default"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (``[a-z0-9][a-z0-9_-]{0,62}``).

    Raises:
        ConfigError: it is not.
    """
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"model name {name[:70]!r} is invalid: use 1-63 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


class ModelSet:
    """Named predictors with a default one.

    Args:
        default: The predictor for requests that name no model.
        default_name: Its name (see :meth:`set_default_name`).
    """

    def __init__(self, default: Predictor, *, default_name: str = DEFAULT_MODEL_NAME) -> None:
        self.default = default
        self._default_name = check_model_name(default_name)
        self._named: dict[str, Predictor] = {}

    @property
    def default_name(self) -> str:
        """The name the default predictor answers to."""
        return self._default_name

    def set_default_name(self, name: str) -> None:
        """Rename the default model (e.g. once the updater installed ``model_id``).

        Raises:
            ConfigError: invalid, or taken by another model.
        """
        check_model_name(name)
        if name in self._named:
            raise ConfigError(f"model name {name!r} is already taken by another model")
        self._default_name = name

    def add(self, name: str, predictor: Predictor) -> None:
        """Serve ``predictor`` under ``name``.

        Raises:
            ConfigError: invalid name, or one already in use.
        """
        check_model_name(name)
        if name in self._named or name in (self._default_name, DEFAULT_MODEL_NAME):
            raise ConfigError(f"model name {name!r} is already taken")
        self._named[name] = predictor

    def get(self, name: str | None) -> Predictor | None:
        """The predictor named ``name`` (None: the default), or None if there is none."""
        if name is None or name == self._default_name or name == DEFAULT_MODEL_NAME:
            return self.default
        return self._named.get(name)

    def items(self) -> Iterator[tuple[str, Predictor]]:
        """``(name, predictor)`` of every model, the default first."""
        yield self._default_name, self.default
        yield from self._named.items()

    def __len__(self) -> int:
        return 1 + len(self._named)
