"""Running the engine: finding the binary (``discovery``), launching it (``launch``), reading its
log (``log_events``, ``log_patterns``, ``log_parser``), health checks (``health``), failure
diagnosis (``diagnosis``), calibration from real logs (``calibration``) and sweep-bench runs
(``bench_run``, ``bench_results``)."""
