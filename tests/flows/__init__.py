"""Tests of flows: the command line and the Prefect flows."""
