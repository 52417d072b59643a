"""fedge shared package: the wire protocol, crypto recipes, manifests and profiles.

Pure code only: no sockets, no files, no torch. Both ``cloud`` and ``edge`` import it;
it imports neither.
"""
