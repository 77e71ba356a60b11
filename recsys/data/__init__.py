"""Data: synthetic generators, raw-format parsers, the prepare pipeline and the Parquet → Batch reader."""
