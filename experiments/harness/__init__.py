"""Code the experiments share, one job per module: config_checks (the settings), loading (model
and windows), run_folder (setup.json, results files, lock), perplexity (row fields and
intervals), reports (tables and plots), distributed (processes and mesh), compile_cache, errors
(one-line user errors) and cli (the command line)."""
