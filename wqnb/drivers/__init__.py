"""Queue drivers: one small interface (:mod:`.base`), many backends."""

from .base import Driver, QueueSpec
from .memory import MemoryDriver

__all__ = ["Driver", "MemoryDriver", "QueueSpec"]
