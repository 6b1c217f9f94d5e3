"""The per-node GPU agent (``aitask agent``): NVML readings, attributed to pods, in Prometheus format."""
