"""The Spark data pipeline: raw JSON lines -> clean Parquet -> feature tables.

Library code only: every function receives a SparkSession (jobs build it). Entry points:
:func:`ecrec_lib.pipeline.clean.run_clean` and :func:`ecrec_lib.pipeline.features.run_features`.

Job exit codes (shared by ``jobs.clean_events``, ``jobs.build_features``, ``jobs.validate``)
are defined in :mod:`ecrec_lib.pipeline.io` so the DAG can branch on them.
"""
