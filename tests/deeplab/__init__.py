"""Tests of The model library."""
