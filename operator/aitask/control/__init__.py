"""Pure orchestration of one scheduling cycle (above core and build, below handlers)."""
