"""A user's own engine, registered with qcengine on import (used by the --import tests)."""

import qcengine

from qcmb_hpc.testing.engines import TestHarness


class MyEngine(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "my_engine"}


if "my_engine" not in qcengine.list_all_programs():
    qcengine.register_program(MyEngine())
