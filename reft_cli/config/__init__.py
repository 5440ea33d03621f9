"""Run configs: the schema, YAML loading with key=value overrides, validation, the shipped configs and split names."""
