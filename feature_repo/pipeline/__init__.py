"""Data code served by the Feast repo: MT5 ingestion into the bar lake, Great Expectations
validation and quarantine, feature transforms, and materialisation. ``.feastignore`` keeps
this package out of ``feast apply``; DAG tasks, the CLI and tests call its functions."""
