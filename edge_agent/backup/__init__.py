"""Online backup and restore of a service's state (see docs/operations.md).

- :mod:`manifest`: what a backup holds and the checks a restore makes (pure).
- :mod:`plan`: which files and streams make up a service's state.
- :mod:`take` / :mod:`restore`: the shells that copy, snapshot and restore.
- :mod:`commands`: the ``backup`` and ``restore`` commands of both CLIs.
"""

from edge_agent.backup.manifest import BackupError, Manifest
from edge_agent.backup.plan import StatePlan, edge_plan

__all__ = ["BackupError", "Manifest", "StatePlan", "edge_plan"]
