"""The one exception type users see: its message is a single line saying what is wrong and what to do."""


class ReftError(Exception):
    """A problem with the user's input (config, files, adapter); the CLI prints it without a traceback."""
