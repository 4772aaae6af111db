"""``python -m qcmb_hpc`` → :func:`qcmb_hpc.cli.main` (ended by :func:`qcmb_hpc.cli.exit_now`)."""

from .cli import command

if __name__ == "__main__":
    command()
