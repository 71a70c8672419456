"""Prefect flows and the prelabel CLI: wiring only; the work lives in pipeline and deeplab."""
