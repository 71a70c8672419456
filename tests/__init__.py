"""Tests: unit tests per module and end-to-end runs; every test makes its own data."""
