"""Kopf handlers; importing this package registers them (``kopf run -m aitask.handlers``)."""

from aitask.handlers import indexes, scheduler, startup  # noqa: F401  (registration by import)
