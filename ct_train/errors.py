"""User-facing errors.

Anything a user can fix (a config key, a data file, a path) raises a subclass of `UserError`. The CLI
prints it as one line and exits non-zero without a traceback; everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """An error the user can fix; its message names the key or file and what is expected."""


class ConfigError(UserError):
    """A config value is invalid or two values contradict each other."""


class DataError(UserError):
    """A data file is missing, malformed, or yields no usable record."""


class CheckpointError(UserError):
    """A checkpoint could not be written (disk full, unwritable directory); older ones are intact."""


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, a lost rank); the message says what to do next."""


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGUSR1) arrived: the run saved a checkpoint at a step boundary and
    stops; the same command resumes it with no step lost (exit status 4, which the SLURM script requeues)."""
