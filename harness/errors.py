"""Errors the command line reports as one line with exit code 2."""


class ArgumentError(Exception):
    """Bad input: a wrong argument, a missing directory, results that cannot answer the question."""
