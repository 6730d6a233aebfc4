"""Config: defaults, a TOML file, COLONY_* overrides, and errors that say what to fix."""

from pathlib import Path

import pytest

from colony.shared.config import (
    Config,
    ConfigError,
    LogSettings,
    MonitorSettings,
    NatsSettings,
    NodeSettings,
    declared_capacity,
    dumps,
    load,
    validate,
)
from colony.shared.messages import Resources


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def load_error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load(path, env=env or {})
    return str(err.value)


def test_defaults():
    config = load(env={})
    assert config == Config()
    assert config.node.id == "node"
    assert config.node.local_nodes == 1
    assert config.nats.servers == ["nats://127.0.0.1:4222"]
    assert config.monitor.interval == 1.0
    assert config.monitor.history == 60
    assert config.monitor.http_port == 0
    assert config.log.level == "info"
    assert config.log.format == "json"


def test_node_name_falls_back_to_the_id():
    assert Config(node=NodeSettings(id="n1")).node_name == "n1"
    assert Config(node=NodeSettings(id="n1", name="node-1")).node_name == "node-1"


def test_load_a_toml_file(tmp_path):
    path = write(
        tmp_path,
        """
        [node]
        id = "n7"
        capacity_cpu = 1.5
        roles = ["edge"]
        labels = { zone = "a" }
        [monitor]
        interval = 2.5
        http_port = 9100
        [log]
        level = "debug"
        """,
    )
    config = load(path, env={})
    assert config.node.id == "n7"
    assert config.node.capacity_cpu == 1.5
    assert config.node.roles == ["edge"]
    assert config.node.labels == {"zone": "a"}
    assert config.monitor.interval == 2.5
    assert config.monitor.http_port == 9100
    assert config.monitor.history == 60  # untouched keys keep their default
    assert config.log.level == "debug"


def test_colony_config_names_the_file(tmp_path):
    path = write(tmp_path, "[node]\nid = 'from-env-file'\n")
    assert load(env={"COLONY_CONFIG": str(path)}).node.id == "from-env-file"


def test_env_overrides_the_file(tmp_path):
    path = write(tmp_path, "[monitor]\ninterval = 2\nhistory = 5\n")
    config = load(path, env={"COLONY_MONITOR__INTERVAL": "3", "COLONY_LOG__LEVEL": "error"})
    assert config.monitor.interval == 3.0
    assert config.monitor.history == 5
    assert config.log.level == "error"


def test_env_values_are_coerced_to_the_key_type():
    config = load(env={"COLONY_MONITOR__HTTP_PORT": "9100", "COLONY_NODE__CAPACITY_CPU": "2.5"})
    assert config.monitor.http_port == 9100
    assert config.node.capacity_cpu == 2.5


def test_unrelated_env_variables_are_ignored():
    env = {"PATH": "/bin", "COLONY_NOSECTION": "x", "HOME__X": "y"}
    assert load(env=env) == Config()


def test_env_list_values_are_comma_separated():
    config = load(
        env={
            "COLONY_NODE__ROLES": "edge, gpu,,db ",
            "COLONY_NATS__SERVERS": "nats://127.0.0.1:4223,nats://127.0.0.1:4224",
        }
    )
    assert config.node.roles == ["edge", "gpu", "db"]
    assert config.nats.servers == ["nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]


def test_out_of_range_port_in_a_file(tmp_path):
    path = write(tmp_path, "[monitor]\nhttp_port = 70000\n")
    assert load_error(path) == (
        f"invalid config monitor.http_port = 70000 (in {path}): expected `int` <= 65535"
    )


def test_negative_interval_from_env():
    assert load_error(env={"COLONY_MONITOR__INTERVAL": "-1"}) == (
        "invalid config monitor.interval = '-1' (from COLONY_MONITOR__INTERVAL): "
        "expected `float` > 0.0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[monitor]\nhistory = 0\n", "monitor.history = 0"),
        ("[monitor]\nhistory = 86401\n", "monitor.history = 86401"),
        ("[node]\nlocal_nodes = 0\n", "node.local_nodes = 0"),
        ("[node]\ncapacity_cpu = 0\n", "node.capacity_cpu = 0"),
        ("[node]\ncapacity_cpu = inf\n", "node.capacity_cpu = inf"),
        ("[node]\ncapacity_cpu = nan\n", "node.capacity_cpu = nan"),
        (
            "[node]\ncapacity_memory = 1152921504606846976\n",
            "node.capacity_memory = 1152921504606846976",
        ),
        ("[nats]\nconnect_timeout = 0\n", "nats.connect_timeout = 0"),
        ("[node]\nid = 'a.b'\n", "node.id = 'a.b'"),
        # fewer than a relay round: nothing to send again after the stream went back
        ("[consensus]\nchange_log_kept = 255\n", "consensus.change_log_kept = 255"),
    ],
)
def test_out_of_range_values_name_key_value_and_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"invalid config {expected} (in {path}): expected")


def test_wrong_type_names_key_value_and_file(tmp_path):
    path = write(tmp_path, "[monitor]\nhistory = 1.5\n")
    assert load_error(path) == (
        f"invalid config monitor.history = 1.5 (in {path}): expected `int`, got `float`"
    )


def test_wrong_type_from_env():
    message = load_error(env={"COLONY_MONITOR__HISTORY": "many"})
    assert message == (
        "invalid config monitor.history = 'many' (from COLONY_MONITOR__HISTORY): "
        "expected `int`, got `str`"
    )


def test_wrong_type_inside_a_list_names_the_list(tmp_path):
    path = write(tmp_path, "[node]\nroles = ['a', 1]\n")
    assert load_error(path).startswith(f"invalid config node.roles = 1 (in {path}): expected `str`")


def test_bad_enum_lists_the_allowed_values():
    assert load_error(env={"COLONY_LOG__LEVEL": "verbose"}) == (
        "invalid config log.level = 'verbose' (from COLONY_LOG__LEVEL): "
        "not an allowed value (allowed: debug, error, info, warning)"
    )


def test_unknown_key_lists_the_known_keys(tmp_path):
    path = write(tmp_path, "[monitor]\nintervall = 2\n")
    assert load_error(path) == (
        f"invalid config monitor.intervall = 2 (in {path}): "
        "unknown key (known keys: history, http_host, http_port, interval)"
    )


def test_unknown_key_from_env():
    message = load_error(env={"COLONY_LOG__COLOR": "yes"})
    assert "log.color = 'yes' (from COLONY_LOG__COLOR): unknown key" in message
    assert "(known keys: format, level)" in message


def test_unknown_section_lists_the_known_sections(tmp_path):
    path = write(tmp_path, "[bogus]\nx = 1\n")
    known = "agent, consensus, log, monitor, nats, node, snapshotter"
    assert f"unknown key (known keys: {known})" in load_error(path)


def test_a_key_where_a_section_belongs(tmp_path):
    path = write(tmp_path, "node = 1\n")
    message = load_error(path, env={"COLONY_NODE__ID": "n1"})
    assert message == "COLONY_NODE__ID: [node] is not a section"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    assert load_error(path) == f"config file {path} does not exist"
    assert load_error(env={"COLONY_CONFIG": str(path)}) == f"config file {path} does not exist"


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[monitor]\ninterval = [\n")
    assert load_error(path).startswith(f"config file {path} is not valid TOML: ")


def test_validate_plain_data():
    assert validate({"monitor": {"history": 5}}).monitor.history == 5
    with pytest.raises(ConfigError) as err:
        validate({"monitor": {"history": 0}})
    assert str(err.value) == "invalid config monitor.history = 0: expected `int` >= 1"


@pytest.mark.parametrize(
    "config",
    [
        Config(),
        Config(
            node=NodeSettings(
                id="n1",
                name="node-1",
                capacity_cpu=1.5,
                capacity_memory=2**30,
                local_nodes=3,
                roles=["edge", "gpu"],
                labels={"zone": "a"},
            ),
            nats=NatsSettings(servers=["nats://127.0.0.1:5000"], tls_ca="/ca.pem"),
            monitor=MonitorSettings(interval=0.5, history=10, http_port=9100),
            log=LogSettings(level="debug", format="text"),
        ),
    ],
    ids=["defaults", "everything-set"],
)
def test_dumps_loads_back_to_an_equal_config(tmp_path, config):
    path = write(tmp_path, dumps(config))
    assert load(path, env={}) == config


@pytest.mark.parametrize("source", ["file", "env"])
def test_unknown_section_says_where_it_came_from(tmp_path, source):
    if source == "file":
        path = write(tmp_path, "[bogus]\nx = 1\n")
        assert f"(in {path})" in load_error(path)
    else:
        assert "(from COLONY_BOGUS__X)" in load_error(env={"COLONY_BOGUS__X": "1"})


def test_wrong_label_value_names_the_key(tmp_path):
    path = write(tmp_path, "[node]\nlabels = { zone = 1 }\n")
    message = load_error(path)
    assert message.startswith("invalid config node.labels")
    assert f"(in {path})" in message


def test_node_id_with_a_trailing_newline_is_rejected():
    assert "node.id" in load_error(env={"COLONY_NODE__ID": "node\n"})


@pytest.mark.parametrize("value", ["", "localhost:4222", "http://h:1", "nats://h:1/x"])
def test_servers_must_be_nats_urls_and_at_least_one(value):
    with pytest.raises(ConfigError, match=r"invalid config nats\.servers"):
        load(env={"COLONY_NATS__SERVERS": value})


def test_an_unreadable_config_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load(tmp_path)


def test_the_agent_s_port_range_must_not_be_upside_down(tmp_path):
    path = write(tmp_path, "[agent]\nport_lo = 21000\nport_hi = 20000\n")
    assert "port_lo 21000 is above port_hi 20000" in load_error(path)


def test_a_node_offers_only_the_process_driver_by_default():
    """sim runs nothing: a node that offered it would take jobs it never runs."""
    assert load(env={}).agent.drivers == ["process"]


def test_the_declared_capacity_is_as_configured_else_the_node_s_share_of_the_host():
    gib = 2**30
    assert declared_capacity(NodeSettings(), 8, 16 * gib) == Resources(8.0, 16 * gib)
    assert declared_capacity(NodeSettings(local_nodes=3), 8, 16 * gib) == Resources(
        2.67, 16 * gib // 3
    )
    configured = NodeSettings(capacity_cpu=1.5, capacity_memory=gib, local_nodes=3)
    assert declared_capacity(configured, 8, 16 * gib) == Resources(1.5, gib)
