"""Configuration: defaults, validation naming the key, environment overrides."""

from pathlib import Path

import pytest

from camservice import config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "camservice.yaml"
    path.write_text(text)
    return path


def test_defaults_are_documented_values():
    cfg = config.load(environ={})
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8002)
    assert cfg.gateway.processes == 1 and cfg.media.backend == "ffmpeg"
    assert cfg.recordings_dir == cfg.state_dir / "recordings"


@pytest.mark.parametrize(
    "text,key",
    [
        ("server:\n  prot: 1\n", "server.prot"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  port: 'abc'\n", "server.port"),
        ("server:\n  port: true\n", "server.port"),
        ("media:\n  backend: gstreamer\n", "media.backend"),
        ("cameras:\n  sim_resolution: big\n", "cameras.sim_resolution"),
        ("gateway:\n  processes: 0\n", "gateway.processes"),
        ("bogus: 1\n", "bogus"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, text, key):
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text), environ={})
    assert str(info.value).startswith(key)


def test_environment_overrides_file_and_parses_types(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\nruntime:\n  state_dir: ./state\n")
    cfg = config.load(path, environ={"CAMSERVICE_SERVER_PORT": "9100", "CAMSERVICE_METRICS_ENABLED": "false"})
    assert cfg.server.port == 9100 and cfg.metrics.enabled is False
    assert cfg.state_dir == tmp_path / "state"  # relative to the file


def test_bad_environment_value_names_key():
    with pytest.raises(config.ConfigError, match="server.port"):
        config.load(environ={"CAMSERVICE_SERVER_PORT": "eighty"})


def test_jwt_secret_alias():
    assert config.load(environ={"CAMSERVICE_JWT_SECRET": "s3cret"}).security.jwt_secret == "s3cret"


def test_tls_needs_both_files(tmp_path):
    with pytest.raises(config.ConfigError, match="server.tls"):
        config.load(write(tmp_path, "server:\n  tls:\n    cert_file: /x.pem\n"), environ={})


def test_overrides_win():
    assert (
        config.load(overrides={"cameras.simulate": 3}, environ={"CAMSERVICE_CAMERAS_SIMULATE": "1"}).cameras.simulate
        == 3
    )


def test_example_file_is_generated_from_the_schema_and_loads():
    example = REPO / "ops" / "camservice.example.yaml"
    assert example.read_text() == config.example_yaml(), "run: camservice config example > ops/camservice.example.yaml"
    cfg = config.load(example, environ={})
    for setting in config.iter_settings():
        assert setting.key in cfg.flat


def test_readme_documents_every_key_with_its_default():
    readme = (REPO / "README.md").read_text()
    for setting in config.iter_settings():
        assert f"| `{setting.key}` |" in readme, setting.key
