"""`python -m deployctl` runs the CLI, named as the installed command is (usage lines, shell
completion's `_DEPLOYCTL_COMPLETE`)."""

from deployctl.cli import main

main(prog_name="deployctl")
