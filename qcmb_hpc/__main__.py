"""``python -m qcmb_hpc`` → :func:`qcmb_hpc.cli.main` (through :func:`qcmb_hpc.cli.command`)."""

from .cli import command

if __name__ == "__main__":
    command()
