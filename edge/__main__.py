"""``python -m edge …``: the edge commands without the root ``fedge`` CLI."""

from edge.cli import edge_app

edge_app(prog_name="fedge edge")
