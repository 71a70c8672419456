"""Tests of pipeline.quality: truth and evaluation."""
