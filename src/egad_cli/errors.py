"""Errors meant for the user: printed as one clear message, without a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message names the key or file and how to fix it."""


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was written; the message says how to resume."""
