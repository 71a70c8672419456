"""Tests of pipeline.labeling: from a source to records."""
