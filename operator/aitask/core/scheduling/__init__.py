"""The scheduler's steps, one module each (``core.scheduler.schedule`` runs them in order)."""
