"""The run folder: its layout and manifest, the lease (one writer at a time), the ledger,
the Parquet tables and records, and the read API (``open_run``) every consumer goes through."""
