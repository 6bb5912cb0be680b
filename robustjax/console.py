"""Console hygiene for entry points (launch.py, experiment scripts)."""

import logging as std_logging

from absl import logging


def quiet_third_party_info() -> None:
  """Keeps INFO lines from our code only: orbax logs every save step and JAX
  every backend probe at INFO, which would bury the progress lines. Warnings
  and errors from every library still show."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING
      or "site-packages" not in record.pathname)
