"""The base of every error caused by bad input (a name, a value, a file) that the user can fix."""


class InputError(ValueError):
    """Bad input: the message says what was wrong, where, what is allowed and what to run."""


class DataError(InputError):
    """A dataset that is missing, empty, corrupt or of the wrong shape."""


class MissingWeightsError(InputError):
    """Pretrained weights that are absent (or corrupt) and cannot be downloaded."""
