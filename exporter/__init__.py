"""Prometheus exporter for how Apache Storm workers shut down on a node."""

__version__ = "0.1.0"
