"""`python -m escapestat_cli` runs the CLI (same as the `escapestat` command)."""

from .app import main

main()
