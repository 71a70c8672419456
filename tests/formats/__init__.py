"""Tests of pipeline.formats: the exports."""
