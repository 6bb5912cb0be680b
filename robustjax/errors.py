"""The one exception type that user-facing entry points turn into a clean exit."""


class ConfigError(ValueError):
  """Bad user input: an unknown name, an out-of-range value, a missing path.

  The message is one line that names what is wrong and how to fix it.
  ``launch.py`` prints it and exits non-zero, before any file is written.
  """
