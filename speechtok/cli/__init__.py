"""`tok`'s entry point, light to import: it sets the start-up signal handlers before the command's imports."""


def main() -> None:
    """`tok`: SIGINT / SIGTERM give one line and exit 128 + N from the first instant, then run the command."""
    from speechtok.stopping import exit_on_signals_until_replaced

    exit_on_signals_until_replaced()
    from speechtok.cli.main import cli

    cli()
