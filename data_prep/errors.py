"""The one exception type for problems a user can fix (bad paths, bad vocab, bad sizes).

The CLI prints these as one line and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class DataPrepError(Exception):
    pass
