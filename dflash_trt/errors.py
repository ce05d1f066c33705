"""User-facing errors: one line naming the file or field and the fix; the CLI exits 2 on them."""


class UserError(Exception):
    """A problem the user can fix (bad path, mismatched checkpoints, bad config).

    The message must name the file or field and say what to do about it.
    """
