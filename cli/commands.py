"""Every command of the app, in the order ``escapestat --help`` lists them (``app.py``
registers them). Each command module keeps the library's heavy parts (torch, optuna)
inside its function, so the statistics commands start without them."""

from . import (
    arrhenius_cmd,
    fit_cmd,
    ingest_cmd,
    optimize_cmd,
    regress_cmd,
    report_cmd,
    run_cmd,
    sweep_cmd,
    theory_cmd,
)

COMMANDS = {
    "arrhenius": arrhenius_cmd.arrhenius,
    "fit": fit_cmd.fit,
    "ingest": ingest_cmd.ingest,
    "optimize": optimize_cmd.optimize_cmd,
    "compare": optimize_cmd.compare_cmd,
    "regress": regress_cmd.regress,
    "report": report_cmd.report,
    "run": run_cmd.run,
    "sweep": sweep_cmd.sweep,
    "theory": theory_cmd.theory,
}
