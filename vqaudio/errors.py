"""The error users see: one line saying what is wrong and how to fix it, no traceback."""


class VqaudioError(Exception):
    """A problem with the user's input (a path, a file, a recipe, a model). The CLI prints its
    message on one line and exits with status 1; ``--debug`` shows the traceback too."""


class Interrupted(VqaudioError):
    """Ctrl-C during training, after the checkpoint of the last finished step was saved."""
