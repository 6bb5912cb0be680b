"""Console hygiene for entry points (launch.py, experiment scripts)."""

import logging as std_logging
import sys

from absl import logging


def quiet_third_party_info() -> None:
  """Keeps INFO lines from our code only: orbax logs every save step and JAX
  every backend probe at INFO, which would bury the progress lines. Warnings
  and errors from every library still show."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING
      or "site-packages" not in record.pathname)


def quiet_late_read_callbacks() -> None:
  """Keeps tensorstore's late callbacks off stderr: when a checkpoint read
  fails (a damaged file), orbax closes its event loop while tensorstore still
  completes the other reads of that restore, and each completion's callback
  raises ``RuntimeError('Event loop is closed')`` in a tensorstore thread,
  which reports it through ``sys.unraisablehook`` as a bare traceback; a
  second read that fails in the same restore leaves its task's exception
  unretrieved, which asyncio logs with a traceback. The failed read's own
  error already became the one-line message; every other unraisable
  exception and asyncio error is still reported."""
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook

  def unretrieved_read_error(record: std_logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (str(record.msg).startswith("Task exception was never "
                                           "retrieved")
                and exc is not None and "Error reading" in str(exc))

  std_logging.getLogger("asyncio").addFilter(unretrieved_read_error)
