"""Tests of pipeline.storage: local folders and S3."""
