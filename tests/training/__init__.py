"""Tests of pipeline.training: fine-tuning."""
