"""Mitogen's linear strategy, taken from the pinned `mitogen` package.

ansible.cfg names this folder in strategy_plugins so that the setting does not
depend on where a venv keeps its site-packages. Mitogen keeps one Python
interpreter per host and runs modules in it, instead of starting a new one per
task (docs/bench/REPORT.md has the before/after). `ANSIBLE_STRATEGY=linear`
turns it off for a run.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
