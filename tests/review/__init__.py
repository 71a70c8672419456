"""Tests of pipeline.review: the report and Label Studio."""
