"""The MPI plugin passes the executor-plugin conformance checks (qcmb_hpc.testing.conformance)
under mpiexec, as the one-node plugins do in tests/test_plugins.py (every rank runs each check:
the runs are collective)."""

import pytest

from ranks_helpers import MPI_TEST_TIMEOUT, ranks_in_step, shared_dir  # noqa: F401 (fixtures)
from qcmb_hpc.testing import conformance

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]


def test_mpi_plugin_conformance(shared_dir):
    conformance.check_plugin("mpi", shared_dir)
