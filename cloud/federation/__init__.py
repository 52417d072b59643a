"""Federated learning on Flower: the coordinator's ServerApp, strategies and update guard.

Import the submodules (``server``, ``guard``, ``strategies``, ``simulation``): this
``__init__`` stays import-light so ``fedge --help`` never loads torch or Flower.
"""
