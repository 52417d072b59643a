"""One ``APIRouter`` per resource, mounted by :func:`cloud.api.app.create_app`."""
