"""`python -m deployctl` runs the CLI."""

from deployctl.cli import main

main()
