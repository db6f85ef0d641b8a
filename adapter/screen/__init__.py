"""Population screening of a Bulk Data export (``ino-adapter screen``, docs/screen.md).

- :mod:`adapter.screen.core`: the engine-independent pieces every engine shares (the per-process
  setup, the byte scans that tell a line's patient and candidacy, one patient's evaluation, the
  partition hash, the summary columns);
- :mod:`adapter.screen.export`: reading an export directory (manifest, files per type, gzip,
  ``deleted/``, error files);
- :mod:`adapter.screen.local`: the local engine (two streaming passes, partitioned spill files,
  worker processes, resumable);
- :mod:`adapter.screen.output`: the run's output files (evaluations, write-back NDJSON, summary
  CSV/Parquet, run report);
- :mod:`adapter.screen.bulk`: ``--server URL --export`` (Bulk Data kick-off, polling, download);
- ``adapter.screen.spark``: the Spark engine (``--engine spark``).
"""
