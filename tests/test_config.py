"""ParallelConfig: defaults, validation, enums from strings, environment variables."""

import dataclasses

import pytest

from qcmb_hpc import LoadBalanceStrategy, ParallelConfig, ParallelManyBodyComputer, ParallelMode
from qcmb_hpc.config import SETTINGS, config_from_environment, parse_memory, settings_table


def test_defaults():
    c = ParallelConfig()
    assert c.mode is ParallelMode.MULTIPROCESSING
    assert c.max_workers is None and c.memory_limit_per_worker is None and c.timeout_per_fragment is None
    assert c.load_balancing is LoadBalanceStrategy.DYNAMIC
    assert c.work_stealing is True and c.retry_failed_fragments is True and c.max_retries == 2
    assert c.fallback_to_sequential is True and c.progress_reporting is True and c.log_level == "INFO"


def test_enums_accept_strings():
    c = ParallelConfig(mode="mpi", load_balancing="work_stealing")
    assert c.mode is ParallelMode.MPI and c.load_balancing is LoadBalanceStrategy.WORK_STEALING
    assert ParallelConfig(mode="SEQUENTIAL").mode is ParallelMode.SEQUENTIAL
    assert ParallelMode("adaptive") is ParallelMode.ADAPTIVE
    assert LoadBalanceStrategy("static") is LoadBalanceStrategy.STATIC


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "warp"),
        ("max_workers", -1),
        ("max_workers", 0),
        ("max_workers", "two"),
        ("memory_limit_per_worker", "lots"),
        ("memory_limit_per_worker", "-2GB"),
        ("timeout_per_fragment", -5),
        ("load_balancing", "random"),
        ("max_retries", -1),
        ("log_level", "LOUD"),
        ("work_stealing", "maybe"),
        ("checkpoint", True),
        ("cost_history", True),
        ("threads_per_worker", False),
    ],
)
def test_bad_values_name_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        ParallelConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg


@pytest.mark.parametrize(
    "text,expected",
    [("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("2G", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30)), (1024, 1024)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected
    assert ParallelConfig(memory_limit_per_worker=text).memory_per_worker_bytes == expected


@pytest.mark.parametrize("field", ["checkpoint", "cost_history", "scratch_directory"])
def test_path_settings_false_means_none(field):
    # (not a file named "False" in the working directory)
    assert getattr(ParallelConfig(**{field: False}), field) is None
    assert getattr(ParallelConfig(**{field: "none"}), field) is None
    assert getattr(ParallelConfig(**{field: "run.jsonl"}), field) == "run.jsonl"


def test_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="nonsense"):
        ParallelConfig.from_dict({"nonsense": 1})
    assert ParallelConfig.coerce({"mode": "multiprocessing"}).mode is ParallelMode.MULTIPROCESSING
    assert ParallelConfig.coerce(None).mode is ParallelMode.SEQUENTIAL


def test_environment_every_field_has_a_variable():
    names = {s.name: s.env for s in SETTINGS}
    assert names["mode"] == "QCMB_PARALLEL_MODE"
    assert names["max_workers"] == "QCMB_MAX_WORKERS"
    assert names["memory_limit_per_worker"] == "QCMB_MEMORY_LIMIT"
    for f in dataclasses.fields(ParallelConfig):
        if f.name not in ("mode", "max_workers", "memory_limit_per_worker"):
            assert names[f.name] == "QCMB_" + f.name.upper()
        assert f.name in settings_table()


def test_environment_values():
    env = {
        "QCMB_PARALLEL_MODE": "sequential",
        "QCMB_MAX_WORKERS": "3",
        "QCMB_MEMORY_LIMIT": "1GiB",
        "QCMB_TIMEOUT_PER_FRAGMENT": "12.5",
        "QCMB_MAX_RETRIES": "5",
        "QCMB_LOAD_BALANCING": "static",
        "QCMB_WORK_STEALING": "false",
        "QCMB_IMPORTS": "json,os.path",
    }
    c = config_from_environment(env)
    assert c.mode is ParallelMode.SEQUENTIAL and c.max_workers == 3 and c.memory_per_worker_bytes == 2**30
    assert c.timeout_per_fragment == 12.5 and c.max_retries == 5 and c.work_stealing is False
    assert c.load_balancing is LoadBalanceStrategy.STATIC and c.imports == ["json", "os.path"]


@pytest.mark.parametrize("var,value", [("QCMB_MAX_WORKERS", "-2"), ("QCMB_PARALLEL_MODE", "fast"), ("QCMB_MEMORY_LIMIT", "x")])
def test_environment_bad_value_names_variable(var, value):
    with pytest.raises(ValueError) as err:
        config_from_environment({var: value})
    assert var in str(err.value)


def test_from_environment_on_computer(monkeypatch, trimer):
    from qcmb_hpc.testing.inputs import many_body_input

    monkeypatch.setenv("QCMB_PARALLEL_MODE", "sequential")
    monkeypatch.setenv("QCMB_MAX_RETRIES", "4")
    comp = ParallelManyBodyComputer.from_environment(many_body_input(trimer))
    assert comp.parallel_config.mode is ParallelMode.SEQUENTIAL and comp.parallel_config.max_retries == 4
    monkeypatch.setenv("QCMB_MAX_WORKERS", "zero")
    with pytest.raises(ValueError, match="QCMB_MAX_WORKERS"):
        ParallelManyBodyComputer.from_environment(many_body_input(trimer))


def test_readme_settings_table_is_current():
    """The README's settings table is generated from the one declaration; keep it in sync."""
    import os

    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    assert settings_table() in readme, "regenerate: python -c 'from qcmb_hpc.config import settings_table; print(settings_table())'"
