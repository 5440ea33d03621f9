"""`python -m reft_cli` runs the `reft` command."""

from reft_cli.cli import main

main()
