"""Keep converter chatter off stdout, so ``--json`` output stays parseable."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def native_output_captured() -> Iterator[None]:
    """Redirect file descriptors 1 and 2 (C++ logs and progress prints of litert-torch and
    the quantizer) into a temporary file; its tail goes to the debug log afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            sink.seek(0)
            tail = sink.read()[-4000:].decode(errors="replace")
            if tail.strip():
                log.debug("converter output (tail):\n%s", tail)
