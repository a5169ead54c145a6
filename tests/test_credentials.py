"""Endpoint credentials: a key written into a URL is sent as the request's auth and never shown or stored, and
the Hugging Face token goes only to Hugging Face hosts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from huggingface_hub import constants

from helpers import build
from net import free_port
from popalign.backends.endpoint_scorer import EndpointScorer
from popalign.credentials import is_hugging_face_host, redacted, split_credentials
from popalign.errors import BackendError, ConfigError
from popalign.roles import parse_spec

PASSWORD, HUB_TOKEN = "s3cretPassw0rd", "hf_machineTokenNotForYou"


def everything_written(result, out: Path) -> str:
    files = [path.read_text(errors="replace") for path in out.rglob("*") if path.is_file() and path.suffix != ".png"]
    parquet = [path.read_bytes().decode("latin-1") for path in out.rglob("*.parquet")]
    return "\n".join([result.stdout, result.stderr, *files, *parquet])


def authorizations(log: Path) -> set[str | None]:
    return {json.loads(line)["authorization"] for line in log.read_text().splitlines()}


@pytest.mark.slow
def test_a_password_in_the_url_is_sent_as_basic_auth_and_never_shown(scripted, tmp_path: Path) -> None:
    url, log = scripted
    secret_url = url.replace("http://", f"http://alice:{PASSWORD}@")
    result, out = build(tmp_path, secret_url, "--strategies", "elicitive", tags=["ok"], HF_TOKEN=HUB_TOKEN)
    assert result.returncode == 0, result.stderr
    basic = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert authorizations(log) == {basic}
    written = everything_written(result, out)
    assert PASSWORD not in written and HUB_TOKEN not in written and url in result.stdout


@pytest.mark.slow
def test_the_hub_token_never_goes_to_another_host(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, _ = build(tmp_path, url, "--strategies", "elicitive", tags=["ok"], HF_TOKEN=HUB_TOKEN)
    assert result.returncode == 0, result.stderr
    assert authorizations(log) <= {None, ""}, "the Hub token (or any key) went to a loopback endpoint"
    keyed, _ = build(tmp_path, f"{url}/?api_key=k123", "--strategies", "elicitive", tags=["ok"], out="keyed")
    assert keyed.returncode == 0, keyed.stderr
    flagged, _ = build(tmp_path, url, "--strategies", "elicitive", "--token", "t456", tags=["ok"], out="flagged")
    assert flagged.returncode == 0, flagged.stderr
    assert authorizations(log) - {None, ""} == {"Bearer k123", "Bearer t456"}


@pytest.mark.slow
def test_errors_name_the_endpoint_without_its_credentials(tmp_path: Path) -> None:
    down = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    result, _ = build(tmp_path, down, "--strategies", "prefix", tags=["ok"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unreachable" in result.stderr and PASSWORD not in result.stdout + result.stderr
    bad, _ = build(tmp_path, f"http://127.0.0.1:1/?api_key={PASSWORD}&debug=1", tags=["ok"], out="bad")
    assert bad.returncode == 2 and PASSWORD not in bad.stdout + bad.stderr
    assert "unsupported query parameter 'debug'" in bad.stderr


def test_url_credentials_are_split_out() -> None:
    assert split_credentials(f"http://alice:{PASSWORD}@host:8080/") == (
        "http://host:8080",
        "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
    )
    assert split_credentials("https://host/v1?token=abc") == ("https://host/v1", "Bearer abc")
    assert redacted(f"user:{PASSWORD}@host") == "host" and redacted("ftp://a:b@h/x#f") == "ftp://h/x"
    with pytest.raises(ConfigError, match="give one credential"):
        split_credentials("http://a:b@host/?key=c")
    with pytest.raises(BackendError) as refused:  # it asks the server what it serves: nothing answers there
        EndpointScorer(f"http://alice:{PASSWORD}@127.0.0.1:9/", tokenizer=None, protocol="tgi")
    assert "endpoint http://127.0.0.1:9: unreachable" in str(refused.value)
    assert PASSWORD not in str(refused.value) and "alice" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "hub"),
    [("https://abc.us-east-1.aws.endpoints.huggingface.cloud", True), ("https://router.huggingface.co/v1", True),
     ("https://x.hf.space", True), ("http://127.0.0.1:8080", False), ("https://huggingface.co.evil.com", False),
     ("https://api.example.com", False)],
)  # fmt: skip
def test_hugging_face_hosts(url: str, hub: bool) -> None:
    assert is_hugging_face_host(url) is hub


def test_the_hub_token_goes_to_hf_endpoint_only_on_its_own_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:18081")
    assert is_hugging_face_host("http://127.0.0.1:18081/api") and is_hugging_face_host("HTTP://127.0.0.1:18081")
    assert not is_hugging_face_host("http://127.0.0.1:8080") and not is_hugging_face_host("https://127.0.0.1:18081")
    assert not is_hugging_face_host("http://127.0.0.1:8201:99")


@pytest.mark.parametrize(
    "spec", [f"HTTP://alice:{PASSWORD}@host:1:2", f"htp://alice:{PASSWORD}@host", f"alice:{PASSWORD}@host"]
)
def test_no_spec_error_shows_a_urls_credentials(spec: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_spec(spec)
    assert PASSWORD not in str(refused.value) and "alice" not in str(refused.value)


def test_an_upper_case_scheme_is_an_endpoint() -> None:
    assert parse_spec(f"HTTPS://alice:{PASSWORD}@Host:8080").kind == "endpoint"
