"""adapter.service.config: the service's configuration file and its INO_ADAPTER_* overrides; every fault
is one line and stops the service before it starts (exit 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapter.errors import MappingTableError
from adapter.service.config import env_overrides, load_config
from tests.support.service import REPO, sha256_hex

HASH = sha256_hex("t")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return path


def test_the_example_configuration_loads() -> None:
    config = load_config(REPO / "examples" / "serve.yaml", environ={})
    assert config.protocol == "nhs-ta514"
    assert config.api_tokens_sha256 and config.cds_hooks.trusted_issuers
    issuer = config.cds_hooks.trusted_issuers[0]
    assert issuer.jwks_file is not None and Path(issuer.jwks_file).is_file()  # relative to the file


def test_defaults_and_public_url(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "port: 9000\n"), environ={})
    assert config.public_url == "http://127.0.0.1:9000"
    assert config.max_request_bytes == 5_000_000 and config.workers == 1 and config.state_db is None


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("intent: proposal\n")
    config = load_config(_write(tmp_path, "site_settings: site.yaml\nstate_db: state.sqlite\n"), environ={})
    assert config.site_settings == str(tmp_path / "site.yaml")
    assert config.state_db == str(tmp_path / "state.sqlite")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, f"port: 9000\napi_tokens_sha256: [{HASH}]\n")
    env = {
        "INO_ADAPTER_PORT": "9100",
        "INO_ADAPTER_PROTOCOL": "fda-label",
        "INO_ADAPTER_API_TOKENS_SHA256": f"[{sha256_hex('u')}, {HASH}]",
        "INO_ADAPTER_FHIR_SERVER__URL": "https://fhir.example.org/r4/",
        "INO_ADAPTER_CDS_HOOKS__CLOCK_SKEW_S": "10",
        "OTHER": "ignored",
    }
    config = load_config(path, environ=env)
    assert config.port == 9100 and config.protocol == "fda-label"
    assert config.api_tokens_sha256 == (sha256_hex("u"), HASH)
    assert config.fhir_server is not None and config.fhir_server.url == "https://fhir.example.org/r4"
    assert config.cds_hooks.clock_skew_s == 10


def test_environment_only() -> None:
    config = load_config(None, environ={"INO_ADAPTER_BASE_URL": "https://a.example.org/"})
    assert config.base_url == "https://a.example.org"


def test_env_overrides_nest() -> None:
    assert env_overrides({"INO_ADAPTER_A__B__C": "1", "INO_ADAPTER_A__D": "[x]"}) == {
        "a": {"b": {"c": "1"}, "d": ["x"]}
    }


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("colour: blue\n", {}, "colour: unknown key"),
        ("port: http\n", {}, "port: Input should be a valid integer"),
        ("protocol: nhs\n", {}, "unknown protocol variant 'nhs'"),
        ("api_tokens_sha256: [abc]\n", {}, "SHA-256 of a token"),
        ("workers: 4\n", {}, "state_db is required with more than one worker"),
        ("mappings: [missing.yaml]\n", {}, "mappings: no such file"),
        ("site_settings: nope.yaml\n", {}, "site_settings: no such file"),
        ("base_url: ftp://x\n", {}, "base_url: must be an http(s) URL"),
        ("cds_hooks: {trusted_issuers: [{iss: x}]}\n", {}, "exactly one of jwks_url or jwks_file"),
        (
            "cds_hooks: {trusted_issuers: [{iss: x, jwks_url: 'http://ehr.example.org/j'}]}\n",
            {},
            "must be https",
        ),
        ("fhir_server: {url: x}\n", {}, "fhir_server.url: must be an http(s) URL"),
        ("- a\n- b\n", {}, "must be a YAML mapping"),
        ("a: [\n", {}, "not valid YAML"),
        ("a: &x 1\nb: *x\n", {}, "aliases"),
        ("", {"INO_ADAPTER_NOPE": "1"}, "nope: unknown key"),
        ("", {"INO_ADAPTER_PORT": "[1"}, "INO_ADAPTER_PORT: not a valid YAML flow value"),
    ],
)
def test_faults_are_one_line(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(MappingTableError) as info:
        load_config(_write(tmp_path, text), environ=env)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_serve_refuses_a_bad_configuration_with_exit_3(tmp_path: Path) -> None:
    path = _write(tmp_path, "colour: blue\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--config", str(path)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("ino-adapter: error: ")
    assert "colour: unknown key" in proc.stderr


def test_serve_refuses_a_broken_site_table_with_exit_3(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("concepts: [\n")
    path = _write(tmp_path, "mappings: [site.yaml]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--config", str(path)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "site.yaml" in proc.stderr
