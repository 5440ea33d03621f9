"""The `reft` command line: one small module per subcommand."""
