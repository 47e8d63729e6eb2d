"""Tests for exporter.config (loader, parsers, types): one bad file per rule with its exact message."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import yamlfile
from exporter.config.loader import ConfigError, load_config, parse_config
from exporter.config.parsers import format_duration, parse_duration
from exporter.config.types import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_INVENTORY_INTERVAL,
    DEFAULT_SETTINGS,
    Config,
    Mode,
    PullSettings,
)
from exporter.state.history import History

REPO_ROOT = Path(__file__).resolve().parents[3]
BAD_DIR = Path("tests/configs/bad")  # relative: messages name the file exactly as given
ENVIRON = {"OLLAMA_TOKEN": "tok"}

# One file per rule, with every message it must produce, exactly.
BAD_CONFIGS: dict[str, tuple[str, ...]] = {
    "url-credentials-and-authorization": (
        "url-credentials-and-authorization.yaml:5: servers[0].headers.authorization: the url has "
        "user info (user:password@) and headers set Authorization: keep one (the user info "
        "becomes a Basic Authorization header)",
    ),
    "yaml-syntax": (
        "yaml-syntax.yaml:3: invalid YAML: while parsing a flow sequence, "
        "did not find expected ',' or ']'",
    ),
    "multiple-documents": (
        "multiple-documents.yaml:4: invalid YAML: expected a single document in the stream, "
        "but found another document",
    ),
    "control-character": (
        "control-character.yaml:3: invalid YAML: character U+0001 is not allowed",
    ),
    "not-utf8": ("not-utf8.yaml:3: not valid UTF-8 (byte 0xe9)",),
    "empty": ("empty.yaml:1: the config is empty",),
    "top-level-not-mapping": (
        "top-level-not-mapping.yaml:1: the top level must be a mapping, got a list",
    ),
    "unknown-top-level-key": (
        "unknown-top-level-key.yaml:1: global: unknown key "
        "(allowed: defaults, servers, inventory_interval, max_concurrent_pulls,"
        " server_discovery, history_limit)",
    ),
    "unknown-defaults-key": (
        'unknown-defaults-key.yaml:2: defaults.intervall: unknown key (did you mean "interval"?)',
    ),
    "unknown-server-key": (
        'unknown-server-key.yaml:3: servers[0].modles: unknown key (did you mean "models"?)',
    ),
    "unknown-model-key": (
        "unknown-model-key.yaml:5: servers[0].models[0].retries: unknown key "
        "(allowed: name, interval, jitter, timeout, stall_timeout, insecure, run_on_start, "
        "mode, window, window_timezone)",
    ),
    "duplicate-key": ("duplicate-key.yaml:3: servers[0].url: duplicate key (first on line 2)",),
    "non-string-key": ("non-string-key.yaml:4: servers[0]: keys must be strings, got integer 1",),
    "merge-key": ("merge-key.yaml:7: servers[0].models[0].<<: merge keys are not supported",),
    "servers-missing": ("servers-missing.yaml:1: servers: required key is missing",),
    "servers-empty": (
        "servers-empty.yaml:1: servers: expected a non-empty list, got an empty list",
    ),
    "server-not-mapping": (
        "server-not-mapping.yaml:2: servers[0]: expected a mapping with keys name, url, headers, "
        "max_concurrent_pulls, models, inventory_interval, window, window_timezone, "
        'got string "http://127.0.0.1:11434"',
    ),
    "url-missing": ("url-missing.yaml:2: servers[0].url: required key is missing",),
    "url-scheme": (
        "url-scheme.yaml:2: servers[0].url: the URL must start with http:// or https://",
    ),
    "url-no-host": ("url-no-host.yaml:2: servers[0].url: the URL has no host",),
    "url-bad-port": ("url-bad-port.yaml:2: servers[0].url: invalid URL: bad port or IPv6 address",),
    "url-query": ("url-query.yaml:2: servers[0].url: the URL must not have a query or fragment",),
    "url-env-unset": (
        "url-env-unset.yaml:2: servers[0].url: environment variable OLLAMA_HOST is not set",
    ),
    "server-name-duplicate": (
        'server-name-duplicate.yaml:5: servers[1].name: duplicate server name "gpu" '
        "(same as servers[0])",
    ),
    "server-name-duplicate-from-url": (
        "server-name-duplicate-from-url.yaml:4: servers[1].url: duplicate server name "
        '"127.0.0.1:11434" (same as servers[0]; it comes from the url, so set a name)',
    ),
    "server-name-control-character": (
        "server-name-control-character.yaml:2: servers[0].name: "
        'must be UTF-8 text without control characters or line breaks, got "gpu\\nbox"',
    ),
    "server-name-empty": ("server-name-empty.yaml:2: servers[0].name: must not be empty",),
    "label-not-string": (
        "label-not-string.yaml:2: servers[0].name: expected a string, got integer 2024",
    ),
    "models-missing": ("models-missing.yaml:2: servers[0].models: required key is missing",),
    "models-empty": (
        "models-empty.yaml:3: servers[0].models: expected a non-empty list, got an empty list",
    ),
    "model-wrong-type": (
        "model-wrong-type.yaml:4: servers[0].models[0]: "
        "expected a model name or a mapping with a name, got a list",
    ),
    "model-name-missing": (
        "model-name-missing.yaml:4: servers[0].models[0].name: required key is missing",
    ),
    "model-name-whitespace": (
        'model-name-whitespace.yaml:4: servers[0].models[0]: invalid model name "llama 3.2": '
        "whitespace is not allowed",
    ),
    "model-name-empty-tag": (
        'model-name-empty-tag.yaml:4: servers[0].models[0]: invalid model name "gemma3:": '
        "the tag is empty",
    ),
    "model-duplicate": (
        "model-duplicate.yaml:5: servers[0].models[1].name: duplicate model "
        '"registry.ollama.ai/library/Gemma3:latest" (same as "gemma3" on line 4)',
    ),
    "duration-invalid": (
        'duration-invalid.yaml:14: servers[0].models[2].interval: invalid duration "5 minutes"',
    ),
    "duration-bare-number": (
        "duration-bare-number.yaml:2: defaults.interval: invalid duration 300: "
        'a unit is required (e.g. "300s")',
    ),
    "duration-empty": ('duration-empty.yaml:2: defaults.timeout: invalid duration ""',),
    "duration-null": (
        'duration-null.yaml:2: defaults.timeout: expected a duration such as "30s", got null',
    ),
    "duration-negative": ('duration-negative.yaml:2: defaults.interval: invalid duration "-5m"',),
    "duration-unit-order": (
        'duration-unit-order.yaml:2: defaults.interval: invalid duration "30m1h"',
    ),
    "duration-too-long": (
        'duration-too-long.yaml:2: defaults.interval: invalid duration "400d": longer than 365d',
    ),
    "duration-tagged": (
        'duration-tagged.yaml:2: defaults.interval: expected a duration such as "30s", '
        "got a value tagged tag:yaml.org,2002:timestamp",
    ),
    "interval-zero": ('interval-zero.yaml:2: defaults.interval: must be greater than 0, got "0s"',),
    "jitter-out-of-range": (
        "jitter-out-of-range.yaml:2: defaults.jitter: expected a number from 0 to 1, "
        "got number 1.5",
    ),
    "jitter-not-number": (
        "jitter-not-number.yaml:2: defaults.jitter: expected a number from 0 to 1, "
        'got string "10%"',
    ),
    "boolean-quoted": (
        'boolean-quoted.yaml:2: defaults.insecure: expected true or false, got string "false"',
    ),
    "boolean-number": (
        "boolean-number.yaml:2: defaults.run_on_start: expected true or false, got integer 1",
    ),
    "stall-timeout-not-below-timeout-model": (
        "stall-timeout-not-below-timeout-model.yaml:5: servers[0].models[0].timeout: "
        "stall_timeout (10m) must be less than timeout (10m)",
    ),
    "stall-timeout-not-below-timeout-defaults": (
        "stall-timeout-not-below-timeout-defaults.yaml:3: defaults.stall_timeout: "
        "stall_timeout (5m) must be less than timeout (5m)",
    ),
    "max-concurrent-pulls-zero": (
        "max-concurrent-pulls-zero.yaml:3: servers[0].max_concurrent_pulls: "
        "expected an integer >= 1, got integer 0",
    ),
    "max-concurrent-pulls-bool": (
        "max-concurrent-pulls-bool.yaml:3: servers[0].max_concurrent_pulls: "
        "expected an integer >= 1, got boolean true",
    ),
    "headers-not-mapping": (
        "headers-not-mapping.yaml:3: servers[0].headers: "
        "expected a mapping of names to values, got a list",
    ),
    "header-name-invalid": (
        'header-name-invalid.yaml:4: servers[0].headers: invalid header name: string "X Token"',
    ),
    "header-duplicate": (
        "header-duplicate.yaml:5: servers[0].headers.authorization: "
        "duplicate header (first on line 4)",
    ),
    "header-value-not-string": (
        "header-value-not-string.yaml:4: servers[0].headers.X-Api-Key: "
        "expected a string, got integer (value not shown)",
    ),
    "header-env-unset": (
        "header-env-unset.yaml:4: servers[0].headers.Authorization: "
        "environment variable OLLAMA_PROXY_TOKEN is not set",
    ),
    "header-stray-dollar": (
        "header-stray-dollar.yaml:4: servers[0].headers.Authorization: "
        'a "$" must start ${NAME} or be doubled as "$$"',
    ),
    # Inventory, check mode, windows and the fleet-wide limit (contract section 6).
    "inventory-interval-invalid": (
        'inventory-interval-invalid.yaml:1: inventory_interval: invalid duration "1 minute"',
    ),
    "inventory-interval-too-short": (
        'inventory-interval-too-short.yaml:1: inventory_interval: interval "1ms" is shorter '
        "than the minimum of 1s (a typo for a minute or an hour?)",
    ),
    "inventory-interval-bare-number": (
        "inventory-interval-bare-number.yaml:3: servers[0].inventory_interval: "
        'invalid duration 60: a unit is required (e.g. "60s")',
    ),
    "fleet-limit-zero": (
        "fleet-limit-zero.yaml:1: max_concurrent_pulls: expected an integer >= 1, got integer 0",
    ),
    "mode-unknown": (
        'mode-unknown.yaml:2: defaults.mode: expected "pull" or "check", got string "watch"',
    ),
    "window-format": (
        'window-format.yaml:3: servers[0].window: invalid window "22-04": '
        'expected "HH:MM-HH:MM" (e.g. "22:00-04:00")',
    ),
    "window-empty": (
        'window-empty.yaml:5: servers[0].models[0].window: invalid window "10:00-10:00": '
        "it starts when it ends",
    ),
    "window-not-string": (
        "window-not-string.yaml:2: defaults.window: expected a string, got integer 2200",
    ),
    "window-timezone-unknown": (
        "window-timezone-unknown.yaml:3: defaults.window_timezone: "
        'unknown time zone "Mars/Olympus_Mons" (an IANA name such as "Europe/Berlin")',
    ),
    "check-without-inventory": (
        "check-without-inventory.yaml:3: servers[0].inventory_interval: 0s disables the "
        'inventory, which mode: check needs (model "gemma3" of servers[0])',
    ),
}
# Messages of the YAML parser itself; the pure-Python fallback words these differently.
SYNTAX_CASES = {"yaml-syntax", "multiple-documents"}

MINIMAL = """\
servers:
  - url: http://127.0.0.1:11434
    models: [llama3.2:1b]
"""


def _errors(text: str, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml", {} if environ is None else environ)
    return caught.value.errors


@pytest.fixture
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.usefixtures("in_repo_root")
@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_reports_exact_errors(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(BAD_DIR / f"{name}.yaml"), ENVIRON)
    assert caught.value.errors == tuple(f"{BAD_DIR}/{error}" for error in BAD_CONFIGS[name])


@pytest.mark.usefixtures("in_repo_root")
@pytest.mark.parametrize("name", sorted(BAD_CONFIGS.keys() - SYNTAX_CASES))
def test_pure_python_loader_reports_the_same(name: str) -> None:
    with (
        mock.patch.object(yamlfile, "_YamlLoader", yaml.SafeLoader),
        pytest.raises(ConfigError) as caught,
    ):
        load_config(str(BAD_DIR / f"{name}.yaml"), ENVIRON)
    assert caught.value.errors == tuple(f"{BAD_DIR}/{error}" for error in BAD_CONFIGS[name])


def test_every_bad_fixture_is_in_the_table() -> None:
    assert {path.stem for path in (REPO_ROOT / BAD_DIR).glob("*.yaml")} == BAD_CONFIGS.keys()


def test_all_errors_are_reported_in_line_order() -> None:
    text = """\
defaults:
  timeout: 5m
servers:
  - name: a
    url: http://127.0.0.1:11434
    models:
      - gemma3
      - name: gemma3:latest
        interval: 90
  - name: a
    url: gopher://x
    max_concurrent_pulls: 0
    models: []
    extra: 1
"""
    errors = _errors(text)
    assert errors == (
        "c.yaml:2: defaults.timeout: stall_timeout (10m) must be less than timeout (5m)",
        'c.yaml:8: servers[0].models[1].name: duplicate model "gemma3:latest" '
        '(same as "gemma3" on line 7)',
        "c.yaml:9: servers[0].models[1].interval: invalid duration 90: a unit is required "
        '(e.g. "90s")',
        'c.yaml:10: servers[1].name: duplicate server name "a" (same as servers[0])',
        "c.yaml:11: servers[1].url: the URL must start with http:// or https://",
        "c.yaml:12: servers[1].max_concurrent_pulls: expected an integer >= 1, got integer 0",
        "c.yaml:13: servers[1].models: expected a non-empty list, got an empty list",
        "c.yaml:14: servers[1].extra: unknown key "
        "(allowed: name, url, headers, max_concurrent_pulls, models, inventory_interval, "
        "window, window_timezone)",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml", {})
    assert str(caught.value) == "\n".join(errors)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "c.yaml:1: the config is empty"),
        ("# nothing\n", "c.yaml:1: the config is empty"),
        ("---\n", "c.yaml:1: the config is empty"),
        ("~\n", "c.yaml:1: the top level must be a mapping, got null"),
        ("servers\n", 'c.yaml:1: the top level must be a mapping, got string "servers"'),
    ],
)
def test_document_must_be_a_mapping(text: str, error: str) -> None:
    assert _errors(text) == (error,)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(str(path), {}).model_count == 1


def test_missing_file(in_repo_root: None) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("tests/configs/no-such-file.yaml")
    assert caught.value.errors == (
        "tests/configs/no-such-file.yaml: cannot read config: No such file or directory",
    )


def test_directory_is_not_a_config(in_repo_root: None) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("tests/configs")
    assert caught.value.errors == ("tests/configs: cannot read config: Is a directory",)


def test_example_config_loads() -> None:
    loaded = load_config(str(REPO_ROOT / "config.example.yaml"), {})
    assert loaded.model_count == 2
    (server,) = loaded.servers
    assert (server.name, server.url, server.max_concurrent_pulls) == (
        "local",
        "http://127.0.0.1:11434",
        1,
    )
    llama, gemma = server.models
    assert llama.name == "llama3.2:1b"
    # Watched, not pulled: the example says at its top what it downloads (1.3 GB would be a lot).
    assert llama.settings == PullSettings(
        6 * 3600, 0.1, 2 * 3600, 600, False, True, mode=Mode.CHECK
    )
    assert gemma.name == "gemma3:270m"
    assert gemma.settings == PullSettings(3600, 0.1, 2 * 3600, 300, False, True)


def test_built_in_defaults() -> None:
    loaded = parse_config(MINIMAL, "c.yaml", {})
    (server,) = loaded.servers
    assert server.max_concurrent_pulls == 1
    assert server.headers == ()
    assert server.models[0].settings == PullSettings(
        interval=21600,
        jitter=0.1,
        timeout=7200,
        stall_timeout=600,
        insecure=False,
        run_on_start=True,
    )


def test_defaults_then_model_overrides() -> None:
    text = """\
defaults:
  interval: 1h
  jitter: 0
  stall_timeout: 1m
  insecure: yes
servers:
  - url: http://127.0.0.1:11434
    models:
      - a
      - name: b
        jitter: 1
        timeout: 2m
        run_on_start: off
"""
    a, b = parse_config(text, "c.yaml", {}).servers[0].models
    assert a.settings == PullSettings(3600, 0.0, 7200, 60, True, True)
    assert b.settings == PullSettings(3600, 1.0, 120, 60, True, False)


def test_model_override_fixes_an_inherited_clash() -> None:
    text = """\
defaults:
  timeout: 5m
  stall_timeout: 1m
servers:
  - url: http://127.0.0.1:11434
    models:
      - name: a
        stall_timeout: 6m
        timeout: 10m
"""
    (model,) = parse_config(text, "c.yaml", {}).servers[0].models
    assert (model.settings.stall_timeout, model.settings.timeout) == (360, 600)


def test_clash_against_inherited_timeout_is_reported_on_the_model() -> None:
    text = MINIMAL.replace("[llama3.2:1b]", "[{name: a, stall_timeout: 3h}]")
    assert _errors(text) == (
        "c.yaml:3: servers[0].models[0].stall_timeout: "
        "stall_timeout (3h) must be less than timeout (2h)",
    )


def test_null_defaults_and_headers_mean_empty() -> None:
    text = "defaults:\n" + MINIMAL.replace("models:", "headers:\n    models:")
    assert parse_config(text, "c.yaml", {}).model_count == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("6h", 21600),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1d2h3m4s5ms", 93784.005),
        ("0s", 0),
        ("90m", 5400),
        ("365d", 365 * 86400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "5", "5 m", " 5m", "5M", "1.5h", "-5m", "+5m", "30m1h", "1h1h", "1y", "ms", "5mm", "366d"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration "):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=365 * 86_400_000))
def test_format_duration_is_read_back_exactly(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == ms / 1000


@pytest.mark.parametrize(
    ("seconds", "text"), [(21600.0, "6h"), (600.0, "10m"), (60.0, "1m"), (5400.5, "1h30m500ms")]
)
def test_format_duration_uses_the_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_config_that_sets_nothing_gets_the_one_set_of_defaults() -> None:
    config = parse_config(MINIMAL, "c.yaml", {})
    (server,) = config.servers
    assert server.models[0].settings == DEFAULT_SETTINGS == PullSettings()
    assert server.inventory_interval == DEFAULT_INVENTORY_INTERVAL
    assert config.history_limit == DEFAULT_HISTORY_LIMIT
    assert History().limit == DEFAULT_HISTORY_LIMIT


def test_mode_is_the_enum_and_serializes_as_before() -> None:
    text = MINIMAL.replace("models: [llama3.2:1b]", "models: [{name: a, mode: check}, b]")
    (server,) = parse_config(text, "c.yaml", {}).servers
    modes = [model.settings.mode for model in server.models]
    assert modes == [Mode.CHECK, Mode.PULL]
    assert all(type(mode) is Mode for mode in modes)
    assert [f"{mode}" for mode in modes] == ["check", "pull"]


@pytest.mark.parametrize(
    ("url", "name", "stored"),
    [
        ("http://127.0.0.1:11434", "127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:11434/", "127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("https://Ollama.Example.com", "ollama.example.com", "https://Ollama.Example.com"),
        ("http://host:80", "host:80", "http://host:80"),
        ("http://[::1]:11434", "[::1]:11434", "http://[::1]:11434"),
        ("http://[fe80::1]", "[fe80::1]", "http://[fe80::1]"),
        ("https://user:pw@proxy/ollama/", "proxy", "https://user:pw@proxy/ollama"),
    ],
)
def test_server_name_defaults_to_host_and_given_port(url: str, name: str, stored: str) -> None:
    (server,) = parse_config(MINIMAL.replace("http://127.0.0.1:11434", url), "c.yaml", {}).servers
    assert (server.name, server.url) == (name, stored)


def test_env_expansion_in_headers_and_url() -> None:
    text = MINIMAL.replace("127.0.0.1", "${HOST}") + (
        "    headers:\n"
        '      Authorization: "Bearer ${TOKEN}"\n'
        '      X-Price: "$$5 ${A}${B} $${NOT_A_VAR}"\n'
    )
    environ = {"HOST": "gpu1", "TOKEN": "t0k", "A": "x", "B": ""}
    (server,) = parse_config(text, "c.yaml", environ).servers
    assert server.url == "http://gpu1:11434"
    assert server.name == "gpu1:11434"
    assert server.headers == (("Authorization", "Bearer t0k"), ("X-Price", "$5 x ${NOT_A_VAR}"))


def test_env_expansion_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_PULL_TEST_TOKEN", "from-env")
    text = MINIMAL + '    headers: {X-Token: "${OLLAMA_PULL_TEST_TOKEN}"}\n'
    assert parse_config(text, "c.yaml").servers[0].headers == (("X-Token", "from-env"),)


def test_env_expansion_names_every_missing_variable() -> None:
    text = MINIMAL + '    headers: {X-Token: "${A}:${B}:${A}"}\n'
    assert _errors(text) == (
        "c.yaml:4: servers[0].headers.X-Token: environment variables A, B are not set",
    )


SECRET = "s3cr3t-Val"


@pytest.mark.parametrize(
    ("value", "environ"),
    [
        (f'"{SECRET}$"', {}),
        (f'"{SECRET}${{MISSING}}"', {}),
        ('"${TOKEN}"', {"TOKEN": f"{SECRET}\n"}),
        (f'"{SECRET}\\r\\nX-Injected: 1"', {}),
        (f"[{SECRET}]", {}),
        (f"{{{SECRET}: 1}}", {}),
        ("12345678", {}),
    ],
)
def test_header_values_never_appear_in_errors(value: str, environ: dict[str, str]) -> None:
    text = MINIMAL + f"    headers:\n      Authorization: {value}\n"
    errors = _errors(text, environ)
    assert len(errors) == 1
    assert errors[0].startswith("c.yaml:5: servers[0].headers.Authorization: ")
    assert SECRET not in errors[0]
    assert "12345678" not in errors[0]


def test_header_values_stay_out_of_repr() -> None:
    text = MINIMAL + f"    headers: {{Authorization: {SECRET}}}\n"
    loaded = parse_config(text, "c.yaml", {})
    assert loaded.servers[0].headers == (("Authorization", SECRET),)
    assert SECRET not in repr(loaded)


def test_deep_nesting_is_a_config_error() -> None:
    depth = sys.getrecursionlimit() + 100  # deeper than Python recurses, a frame a level or more
    text = "servers: " + "[" * depth + "]" * depth
    for loader in (yaml.CSafeLoader, yaml.SafeLoader):
        with mock.patch.object(yamlfile, "_YamlLoader", loader), pytest.raises(ConfigError):
            parse_config(text, "c.yaml", {})


def test_config_is_frozen() -> None:
    loaded = parse_config(MINIMAL, "c.yaml", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.source = "other"  # type: ignore[misc]


# --- properties: any input gives a Config or a ConfigError, never another exception ---

_KEYS = st.sampled_from(
    [
        "defaults",
        "servers",
        "name",
        "url",
        "headers",
        "max_concurrent_pulls",
        "models",
        "interval",
        "jitter",
        "timeout",
        "stall_timeout",
        "insecure",
        "run_on_start",
        "X-Token",
    ]
) | st.text(max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "6h",
            "1h30m",
            "0s",
            "500ms",
            "http://127.0.0.1:11434",
            "https://[::1]:1",
            "gemma3",
            "gemma3:latest",
            "${HOME}",
            "$$",
            "$",
            "a b",
        ]
    )
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=6),
    max_leaves=40,
)


def _outcome(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, "fuzz.yaml", {"HOME": "/root"})
    except ConfigError as exc:
        return exc


def _check_outcome(text: str) -> None:
    loaded = _outcome(text)
    if isinstance(loaded, ConfigError):
        assert loaded.errors
        for error in loaded.errors:
            assert error.startswith("fuzz.yaml:")
            assert "\n" not in error
            error.encode("utf-8")  # printable anywhere
        lines = [int(error.split(":")[1]) for error in loaded.errors]
        assert lines == sorted(lines)
    else:
        for server in loaded.servers:
            assert server.name
            assert server.models
            assert server.max_concurrent_pulls >= 1
            for model in server.models:
                assert 0 < model.settings.stall_timeout < model.settings.timeout
                assert model.settings.interval > 0
                assert 0 <= model.settings.jitter <= 1
                assert not math.isnan(model.settings.jitter)


@given(_DOCUMENTS)
def test_any_yaml_document_gives_config_or_config_error(document: object) -> None:
    _check_outcome(yaml.safe_dump(document))


# Mostly valid values, so that the success path and the cross-field rules get exercised too.
_SETTING_VALUES = {
    "interval": st.sampled_from(["1h", "6h", "30s", "1h30m", "0s", "5 minutes", 300]),
    "jitter": st.sampled_from([0, 0.5, 1, 1.5, "10%"]),
    "timeout": st.sampled_from(["2h", "5m", "90s", "1d"]),
    "stall_timeout": st.sampled_from(["10m", "1m", "30s", "2h"]),
    "insecure": st.booleans() | st.just("yes"),
    "run_on_start": st.booleans() | st.just(1),
}
_MODEL_NAMES = st.sampled_from(
    ["gemma3", "gemma3:latest", "llama3.2:1b", "qwen3:0.6b", "user/m:v1", "hf.co/o/r:Q4", "a b"]
)
_NEAR_VALID = st.fixed_dictionaries(
    {
        "servers": st.lists(
            st.fixed_dictionaries(
                {
                    "url": st.sampled_from(
                        ["http://127.0.0.1:11434", "https://h/p/", "http://[::1]:1", "http://h:0"]
                    ),
                    "models": st.lists(
                        _MODEL_NAMES
                        | st.fixed_dictionaries({"name": _MODEL_NAMES}, optional=_SETTING_VALUES),
                        min_size=1,
                        max_size=3,
                    ),
                },
                optional={
                    "name": st.sampled_from(["a", "b", "", 7]),
                    "max_concurrent_pulls": st.sampled_from([1, 2, 0, True]),
                    "headers": st.dictionaries(
                        st.sampled_from(["X-A", "x-a", "B"]),
                        st.sampled_from(["v", "Bearer ${HOME}", "$", 5]),
                    ),
                },
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={"defaults": st.fixed_dictionaries({}, optional=_SETTING_VALUES)},
)


@given(_NEAR_VALID)
def test_near_valid_documents_give_config_or_config_error(document: object) -> None:
    _check_outcome(yaml.safe_dump(document))


@given(st.text())
def test_any_text_gives_config_or_config_error(text: str) -> None:
    _check_outcome(text)
    with mock.patch.object(yamlfile, "_YamlLoader", yaml.SafeLoader):
        _check_outcome(text)


# --------------------------------------------------------------------------- limits (issue 8)

SERVER = "servers: [{url: 'http://127.0.0.1:11434', models: [m]}]\n"


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" document: 9 ** levels model names from a few hundred bytes."""
    lines = ['l0: &l0 ["a", "a", "a", "a", "a", "a", "a", "a", "a"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return (
        "\n".join(lines)
        + f"\nservers: [{{url: 'http://127.0.0.1:11434', models: *l{levels - 1}}}]\n"
    )


@pytest.mark.timeout(30)  # the unbounded walk took minutes and gigabytes
def test_an_alias_bomb_is_refused_before_it_is_walked() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(alias_bomb(), "bomb.yaml")
    assert caught.value.errors == (
        "bomb.yaml:1: aliases expand the document to more than 500,000 values: refusing to read it",
    )


def test_modest_aliases_still_work() -> None:
    text = (
        "servers:\n"
        "  - {name: x, url: 'http://127.0.0.1:1', models: &models [a, b]}\n"
        "  - {name: y, url: 'http://127.0.0.1:2', models: *models}\n"
    )
    assert parse_config(text, "c.yaml").model_count == 4


def test_a_self_referencing_alias_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"an alias refers to itself"):
        parse_config("servers: &s [{url: 'http://127.0.0.1:1', models: *s}]\n", "c.yaml")


@pytest.mark.timeout(30)
def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(SERVER + "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.errors == (f"{path}: config is larger than 1 MiB: refusing to read it",)


@pytest.mark.timeout(30)  # reading it whole never ended (memory grew without bound)
def test_a_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.symlink_to("/dev/zero")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.errors == (f"{path}: config is larger than 1 MiB: refusing to read it",)


def test_reported_problems_are_capped_with_a_count_of_the_rest() -> None:
    # 30,000 bad entries in 60 KB: every one is a problem, only the first 100 are listed. (The
    # loader is linear: 300,000 in 600 KB, as many as fit under the 1 MiB cap, cost ten times
    # as much and test nothing more.)
    text = "servers: [" + "1," * 30_000 + "]\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "many.yaml")
    errors = caught.value.errors
    assert len(errors) == 101
    assert errors[0].startswith("many.yaml:1: servers[0]: expected a mapping with keys name, url,")
    assert errors[0].endswith(", got integer 1")
    assert errors[-1] == "many.yaml: ... and 29,900 more problems (only the first 100 are shown)"
    assert sum(len(error) for error in errors) < 20_000


@pytest.mark.parametrize("interval", ["1ms", "999ms", "500ms"])
def test_sub_second_intervals_are_refused(interval: str) -> None:
    text = f"defaults: {{interval: {interval}}}\n" + SERVER
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert caught.value.errors == (
        f'c.yaml:1: defaults.interval: interval "{interval}" is shorter than the minimum of 1s'
        " (a typo for a minute or an hour?)",
    )


def test_one_second_is_the_shortest_interval() -> None:
    config = parse_config(
        "defaults: {interval: 1s, timeout: 10s, stall_timeout: 5s}\n" + SERVER, "c.yaml"
    )
    assert config.servers[0].models[0].settings.interval == 1.0


def test_models_with_the_same_settings_share_one_object() -> None:
    """10,000 models on the defaults hold one `PullSettings`, not 10,000 equal ones."""
    config = parse_config(
        "defaults: {interval: 2h}\n"
        "servers:\n"
        "  - {name: a, url: 'http://127.0.0.1:1', models: [m1, m2, {name: m3, jitter: 0.5}]}\n"
        "  - {name: b, url: 'http://127.0.0.1:2', models: [m1, {name: m4, interval: 2h}]}\n",
        "shared.yml",
    )
    first, second = config.servers
    settings = [model.settings for server in config.servers for model in server.models]
    assert len({id(one) for one in settings}) == 2
    assert first.models[0].settings is second.models[1].settings  # written alike: shared
    assert first.models[2].settings.jitter == 0.5
    assert first.models[2].settings is not first.models[0].settings
