"""The chaos suite: faults injected into the operator and the control plane (see lib.py for the sizes)."""
