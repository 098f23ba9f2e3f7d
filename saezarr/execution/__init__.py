"""Where units of work run, for build and analysis alike: connecting to a dask cluster (`connect`), checking its
workers (`checks`, `probe`), running units here or on the cluster (`running`), and what a process keeps across
units, keyed by store identity (`caches`). The stages say what a unit computes; this package imports neither."""
