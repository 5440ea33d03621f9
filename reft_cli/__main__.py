"""`python -m reft_cli` runs the `reft` command."""

from reft_cli.cli.app import main

main()
