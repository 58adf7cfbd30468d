"""The preload_template_plugins callback loads filter and test plugins in the
process that forks the workers, roles' own filter_plugins folders included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: what matters is what the callback itself loads.
PROBE = """
import sys
sys.path.insert(0, {callbacks!r})
from ansible.plugins.loader import filter_loader
filter_loader.add_directory({role_filters!r})

def loaded():
    return sorted(name.split(".")[3].rsplit("_", 1)[0] for name in sys.modules
                  if name.startswith(("ansible.plugins.filter.", "ansible.plugins.test."))
                  and name.count(".") == 3)

import preload_template_plugins
print("before", loaded(), "passlib" in sys.modules)
preload_template_plugins.CallbackModule().v2_playbook_on_play_start(None)
print("after", loaded(), "passlib" in sys.modules)
"""


def test_filters_and_tests_are_loaded_before_workers_fork():
    probe = PROBE.format(callbacks=str(REPO / "plugins" / "callback"),
                         role_filters=str(REPO / "roles" / "pki" / "filter_plugins"))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=REPO)
    before, after = result.stdout.splitlines()
    assert before == "before [] False"
    # ansible.builtin's core filters (they import passlib), its tests, and a
    # role's own filter plugin.
    for plugin in ("core", "mathstuff", "files", "pki"):
        assert f"'{plugin}'" in after, after
    assert after.endswith("True")
