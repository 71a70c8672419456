"""Labeling a source: plan the run, read and decode images, run the model, trace regions in
worker processes, write each shard, finish."""
