"""What ``check-config`` (and ``fieldgate run`` before it starts) knows of the machine: files that
are missing or are not what their key says, directories that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import trustme

from fieldgate_common import file_checks
from gateway.config import ConfigProblem, load_config, preflight

NOBODY = 65534


def write(tmp_path: Path, extra_push: str = "", adapters: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[push]
service = "https://push.example/subscribe"
state_dir = "{tmp_path / "state"}"
{extra_push}

[adapters.out]
type = "log"
{adapters}

[[routes]]
name = "r"
deliver = [{{ adapter = "out" }}]
"""
    )
    return path


def problems(path: Path) -> list[ConfigProblem]:
    return preflight(load_config(path))


def test_a_good_machine_has_no_problems(tmp_path):
    assert problems(write(tmp_path)) == []


def test_problems_name_the_file_the_key_and_the_line(tmp_path):
    path = write(tmp_path, f'ca_file = "{tmp_path / "nope.pem"}"')
    [problem] = problems(path)
    assert (problem.file, problem.key_path) == (path, "push.ca_file")
    assert problem.line == 5 and "nope.pem does not exist" in problem.message


def test_a_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("")
    [problem] = problems(write(tmp_path))
    assert problem.key_path == "push.state_dir" and "is not a directory" in problem.message


def test_mqtt_tls_files(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("gateway.example")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(other_key))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a certificate\n")

    def mqtt(**files: Path) -> list[ConfigProblem]:
        lines = "".join(f'{k} = "{v}"\n' for k, v in files.items())
        adapter = f'\n[adapters.broker]\ntype = "mqtt"\ntls = true\n{lines}'
        path = write(tmp_path, adapters=adapter)
        text = path.read_text().replace('{ adapter = "out" }', '{ adapter = "broker" }')
        path.write_text(text)
        return problems(path)

    assert mqtt(ca_file=ca_file, cert_file=cert, key_file=key) == []
    [bad_ca] = mqtt(ca_file=text_file)
    assert bad_ca.key_path == "adapters.broker.ca_file" and "no PEM certificate" in bad_ca.message
    [mismatch] = mqtt(ca_file=ca_file, cert_file=cert, key_file=other_key)
    assert mismatch.key_path == "adapters.broker.key_file"
    assert "not a certificate and its private key" in mismatch.message
    [missing] = mqtt(cert_file=tmp_path / "gone.pem", key_file=key)
    assert missing.key_path == "adapters.broker.cert_file"
    [password] = mqtt(password_file=tmp_path / "secret")
    assert password.key_path == "adapters.broker.password_file"


def test_permissions_are_judged_only_where_they_are_the_gateway_s(tmp_path):
    # check-config run by an operator must not fail on the gateway user's private directory;
    # a directory the checking user owns and cannot write is reported. As uid 65534 (nobody).
    base = Path(tempfile.mkdtemp(prefix="fieldgate-perm-"))
    try:
        base.chmod(0o755)
        others = base / "root-owned"
        others.mkdir(mode=0o700)
        own = base / "nobody-owned"
        own.mkdir(mode=0o500)
        os.chown(own, NOBODY, NOBODY)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, check, report, exit without cleanup
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                verdicts = [file_checks.writable_directory(p) for p in (others, own)]
                os.write(write, json.dumps(verdicts).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as answer:
            verdict_others, verdict_own = json.loads(answer.read())
        assert verdict_others is None
        assert verdict_own == f"the directory {own} cannot be written"
    finally:
        shutil.rmtree(base)
