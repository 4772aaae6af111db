"""In-run calibration re-orders the remaining queue: the real Coordinator, Scheduler and CostModel
on a real multilevel plan, with workers modelled on a fake clock (qcmb_hpc.simulate.SimTransport),
so the test is exact and takes no real time.

The plan: (H2O)5, 2-body, CCSD for the 2-body level (monomers and dimers) and HF for the 1-body
level (monomers). The default exponents say CCSD (x^6) costs far more than HF (x^3.5): CCSD dimers,
then CCSD monomers, then HF monomers. The "measured" times say the opposite — CCSD is cheap here,
HF slow — so once the first CCSD results are in, the refit must move the CCSD monomers behind the
HF ones."""

import pytest

from qcmb_hpc.config import LoadBalanceStrategy
from qcmb_hpc.coordinator import Coordinator
from qcmb_hpc.cost import CostModel
from qcmb_hpc.plan import make_plan
from qcmb_hpc.simulate import SimClock, SimTransport
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

SPECS = {
    "a": {"program": "qcmb_sleep", "method": "ccsd", "basis": "sto-3g"},
    "b": {"program": "qcmb_sleep", "method": "hf", "basis": "sto-3g"},
}
TRUE_SECONDS = {("a", 2): 0.02, ("a", 1): 0.01, ("b", 1): 1.0}  # what the fragments really take


@pytest.fixture(scope="module")
def plan():
    inp = many_body_input(water_cluster(5), levels={1: "b", 2: "a"}, specifications=SPECS, bsse_type=["nocp"])
    return make_plan(inp)


def groups(plan):
    return {g: [t.id for t in plan.tasks if (t.mc, t.nbody) == g] for g in TRUE_SECONDS}


def run(plan, calibrate):
    """Run the plan on one modelled worker; returns (task ids in the order they started, the
    re-estimates the cost model returned to the coordinator)."""
    model = CostModel(plan.core.molecule, plan.specifications)
    model.estimate_tasks(plan.tasks)
    returned = []
    reestimate = model.reestimate

    def spy(tasks):
        costs = reestimate(tasks)
        returned.append(costs)
        return costs

    model.reestimate = spy
    actual = [TRUE_SECONDS[(t.mc, t.nbody)] for t in plan.tasks]
    assert [t.id for t in plan.tasks] == list(range(len(actual)))  # SimTransport indexes by task id
    clock = SimClock()
    coord = Coordinator(
        plan.tasks,
        SimTransport(actual, 1, clock),
        None,
        strategy=LoadBalanceStrategy.DYNAMIC,
        work_stealing=False,
        prefetch=1,
        retry_failed=False,
        cost_model=model if calibrate else None,
        clock=clock,
    )
    out = coord.run()
    assert len(out.properties) == len(plan.tasks) and not out.failures
    order = [tid for tid, _w, start, _s in sorted(out.timings, key=lambda t: t[2])]
    return order, returned, model


def test_the_default_model_orders_the_methods_wrongly(plan):
    model = CostModel(plan.core.molecule, plan.specifications)
    costs = model.estimate_tasks(plan.tasks)
    g = groups(plan)
    assert min(costs[i] for i in g[("a", 2)]) > max(costs[i] for i in g[("a", 1)])
    assert min(costs[i] for i in g[("a", 1)]) > max(costs[i] for i in g[("b", 1)])  # CCSD ≫ HF, so it says


def test_without_calibration_the_wrong_order_stays(plan):
    order, returned, _ = run(plan, calibrate=False)
    g = groups(plan)
    assert returned == []
    pos = {tid: i for i, tid in enumerate(order)}
    assert max(pos[i] for i in g[("a", 1)]) < min(pos[i] for i in g[("b", 1)])  # CCSD monomers first


def test_the_in_run_refit_reorders_the_remaining_queue(plan):
    order, returned, model = run(plan, calibrate=True)
    g = groups(plan)
    # the refit changed the order of the estimates: the coordinator got new costs for what was left
    new = [c for c in returned if c is not None]
    assert new, returned
    first = new[0]
    assert set(g[("a", 1)]) | set(g[("b", 1)]) <= set(first)
    assert min(first[i] for i in g[("b", 1)]) > max(first[i] for i in g[("a", 1)])  # HF now ahead of CCSD
    # ... and the scheduler ran them in the new order: every HF monomer before any CCSD monomer
    pos = {tid: i for i, tid in enumerate(order)}
    assert max(pos[i] for i in g[("b", 1)]) < min(pos[i] for i in g[("a", 1)])
    # the CCSD dimers stayed first (handed out before the refit, or still the costliest)
    assert sorted(pos[i] for i in g[("a", 2)]) == list(range(len(g[("a", 2)])))
    # the estimates the run started with are kept for the report
    assert model.initial_estimates[g[("a", 1)][0]] > model.initial_estimates[g[("b", 1)][0]]
