"""Formats derived from a run's records: each exporter reads the tables, never the model."""
