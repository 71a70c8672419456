"""Tests of pipeline.run: the run folder, its lease, ledger, tables and read API."""
