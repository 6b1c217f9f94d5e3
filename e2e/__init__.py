"""End-to-end harness: a real local Kubernetes control plane with KWOK fake GPU nodes, and Prometheus.

See e2e/README.md. The library API lives in :mod:`e2e.cluster`; wait/poll helpers in :mod:`e2e.util`.
"""
