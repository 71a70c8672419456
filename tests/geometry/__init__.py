"""Tests of pipeline.geometry: class maps to regions."""
