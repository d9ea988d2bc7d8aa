"""The one exception type for problems the user can fix.

The command line prints its message as a single sentence and exits non-zero,
with no traceback; anything else reaching the top is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input (config, data, checkpoint, mesh): the message names cause and fix."""
