"""The coordinator's control API (FastAPI): ``create_app(settings, resources=None)``.

See :mod:`cloud.api.app`; importing this package starts nothing.
"""

from cloud.api.app import create_app
from cloud.api.deps import Resources

__all__ = ["Resources", "create_app"]
