"""What qrtrain prints: progress lines, error lines, tables, and quiet libraries.

    qrtrain train model=tiny training.max_steps=2   # `qrtrain:` lines on stderr come from say()
"""

from qrtrain.errors import QrtrainError


def say(message: str) -> None:
    """One progress line on stderr: `qrtrain: <message>`."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[dim]qrtrain:[/] {escape(message)}")


def report_error(error: QrtrainError) -> None:
    """Print an error as the CLI shows it: `error: <message>` on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(error.message)}")


def table_console():
    """A rich console for tables; off a terminal (CI logs) wide, so rows are not folded into narrow columns."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True, width=240)


def quiet_libraries() -> None:
    """Keep library chatter (per-dataset progress bars, load reports) out of the terminal."""
    import logging
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft|transformers|trl|torch")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
