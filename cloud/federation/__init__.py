"""Federated learning on Flower: the coordinator's ServerApp, strategies and update guard.

Import the submodules (``server``, ``guard``, ``strategies``, ``simulation``, ``secagg`` for
SecAgg+ rounds, ``sealing`` for the keys of sealed updates): this
``__init__`` stays import-light so ``fedge --help`` never loads torch or Flower.
"""
