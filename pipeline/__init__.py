"""The data path as plain functions, no Prefect here. One package per stage:
``storage`` (where bytes live), ``run`` (the run folder), ``labeling`` (source to records),
``geometry`` (class maps to regions), ``formats`` (exports), ``review``, ``quality``,
``training``; ``config``, ``errors`` and ``retry`` serve them all."""
