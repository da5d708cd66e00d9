"""The base of every error fedfms raises for bad input or a state the user can fix (a config
typo, corrupt data, a checkpoint of the wrong shape, a node that did not answer...). The command
line prints these as one line naming the file or node, without a traceback."""


class FedfmsError(Exception):
    """An error whose message is meant for the user."""
