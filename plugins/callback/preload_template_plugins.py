"""Load the Jinja filter and test plugins once, in the controller's main process.

ansible-playbook forks a worker for every host and task. A filter or test
plugin file that the main process never loaded is loaded again in each
worker that uses it: `ansible.builtin`'s core filters import passlib, about
a fifth of the workers' CPU on a 23-host run (py-spy, docs/architecture.md).
Loaded here at the start of each play (roles add their filter_plugins
folders when the playbook is parsed), the workers inherit them.
"""

from __future__ import annotations

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import filter_loader, test_loader

DOCUMENTATION = """
    name: preload_template_plugins
    type: aggregate
    short_description: Load Jinja filter and test plugins before workers fork
    description:
      - At the start of each play, loads every filter and test plugin file on
        the configured paths in the controller's main process, so that forked
        workers inherit them instead of loading them once per host and task.
    requirements:
      - enable in ansible.cfg (callbacks_enabled)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "preload_template_plugins"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_play_start(self, play):
        for loader in (filter_loader, test_loader):
            for _plugin in loader.all():
                pass
