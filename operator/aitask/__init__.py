"""aitask-operator: places AI sub-tasks on executor classes chosen by a cost model."""

__version__ = "0.1.0"
