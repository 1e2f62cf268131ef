"""The sans-IO core: tower and job state machines, allocation, the handshake judge.

Nothing here opens a socket, reads a clock, sleeps or draws a random number.
The shell feeds `SiteCore.handle(event, now)` and carries out the actions it
returns; see `tower.core.site` for the theory of operation.
"""

from tower.core.allocator import Allocator, FirstFit, TowerView
from tower.core.errors import IllegalTransition, RequestRefused
from tower.core.restore import RestoredJob, RestoredState
from tower.core.site import SiteCore

__all__ = [
    "Allocator",
    "FirstFit",
    "IllegalTransition",
    "RequestRefused",
    "RestoredJob",
    "RestoredState",
    "SiteCore",
    "TowerView",
]
