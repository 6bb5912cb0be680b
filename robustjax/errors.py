"""The exceptions that user-facing entry points turn into a clean exit.

``launch.py`` maps them to exit codes: ``ConfigError`` prints its one line
and exits with ``EXIT_USER_ERROR`` (2); ``Preempted`` prints its one line
and exits with ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h: run
the same command again). Any other exception is a bug in robustjax: its
traceback is printed with a line saying so, and the exit code is 1.
"""

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75


class ConfigError(ValueError):
  """A failure the user causes or can fix: bad input (an unknown name, an
  out-of-range value, a missing path), a training loss that became
  non-finite, a damaged checkpoint, a full disk, a workdir held by another
  run.

  The message is one line that names what is wrong and how to fix it.
  ``launch.py`` prints it and exits with code 2; bad input is refused before
  any file is written.
  """


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT (or a multi-host preemption notice)
  after writing a durable checkpoint at ``step``; rerunning the same command
  resumes from it."""

  def __init__(self, step: int):
    super().__init__(f"preempted at step {step}; run the same command to "
                     "resume")
    self.step = step
