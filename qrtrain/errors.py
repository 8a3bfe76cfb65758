"""The one error type that the CLI turns into a message and an exit code.

    qrtrain train model.path=/no/such/folder     # -> error: ..., exit 2
"""


class QrtrainError(Exception):
    """Bad input or a failed check: `message` says what, where and what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
