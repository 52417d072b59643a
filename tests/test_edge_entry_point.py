"""``fedge edge …`` loads no cloud code; a cloud command on an edge-only install says why.

Run in a subprocess so the check sees exactly what one invocation imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
sys.argv = ["fedge", "edge", "check-profile", "firmware_configs/smart_camera.toml"]
import simulations.cli as cli
try:
    cli.main()
except SystemExit:
    pass
print(json.dumps({"cloud": sorted(m for m in sys.modules if m.split(".")[0] == "cloud"),
                  "torch": "torch" in sys.modules}))
"""

EDGE_ONLY = """
import sys
class _NoCloudDeps:
    # An edge-only install: the cloud extra's packages are absent.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "fastapi", "sqlalchemy", "flwr", "litert_torch"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoCloudDeps())
sys.argv = ["fedge", "models", "list"]
import simulations.cli as cli
cli.main()
"""


def test_fedge_edge_imports_no_cloud_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"cloud": [], "torch": False}


def test_a_cloud_command_on_an_edge_only_install_names_the_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", EDGE_ONLY], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "fedge[cloud]" in out.stderr and "Traceback" not in out.stderr
