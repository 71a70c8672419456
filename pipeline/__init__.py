"""The data path: storage, decoding, shards, regions, tables and exporters; no Prefect here."""
