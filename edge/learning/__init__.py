"""On-device learning: the Flower ClientApp that fine-tunes on local data.

The only part of ``edge/`` allowed to import torch (devices whose profile says they train).
Import :mod:`edge.learning.client_app` for the ``app`` object (or
:mod:`edge.learning.secagg_client` for the SecAgg+ one); this package's ``__init__``
stays light so importing ``edge.learning`` does not load torch.
"""
