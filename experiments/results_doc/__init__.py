"""Writes docs/results.md from the result files under docs/results/, so its tables cannot go stale.

    python -m experiments.results_doc            rewrite docs/results.md
    python -m experiments.results_doc --check    exit 1 if docs/results.md differs from what
                                                 the files give (tests/results_doc_test.py)

Every table names the command that wrote its files, the CPU it ran on and the files it was read
from. The command is not only written down: it is parsed with the experiment's own config file
(ml_collections, as `--config=` parses it) and checked against the files, setting by setting
(setup.json, chosen.json, the configurations the rows hold), so a wrong command fails here. A
recorded run whose setup the current config file cannot reproduce exactly names the setting in
`Run.known`, and the page says so. Intervals are recomputed from the rows' per-window NLL sums
with the experiments' own paired bootstrap (experiments.harness.perplexity.increase_interval); a
run without them is shown without, and the page says so. The prose between the tables takes its
numbers from the files too.

The page is built in parts: runs.py (the recorded runs, their commands and files), text.py (numbers
and tables as shown), studies.py (sweeps, rounding, sensitivity, noise floor), formats.py (the
formats study), searches.py (the searches and the fine-tuning), transfer.py (the two models side
by side), page.py (the whole page); __main__.py is the command.
"""
