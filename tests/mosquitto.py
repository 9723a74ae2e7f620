"""A real mosquitto broker for tests, on free loopback ports with a generated configuration.

Test modules import the fixtures they use explicitly::

    from tests.mosquitto import mosquitto, mosquitto_factory  # noqa: F401

``mosquitto`` is a started plain broker; ``mosquitto_factory(...)`` builds brokers with a TLS
listener (trustme certificates, optional ``require_certificate``), a password file (made with
``mosquitto_passwd``) and an ACL file. Every broker made by a fixture is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
# mosquitto prints this once every listener is open (mosquitto 2.0: "mosquitto version X running").
READY_MARK = " running"
# Loopback start takes tens of milliseconds; this only bounds a broken installation.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ClientCert:
    """PEM files a TLS client presents (certificate chain and key in one file each)."""

    cert_file: Path
    key_file: Path


class Mosquitto:
    """One mosquitto process; ``stop()`` and ``start()`` again keep its ports and files."""

    def __init__(
        self,
        directory: Path,
        *,
        tls_ca: trustme.CA | None = None,
        require_certificate: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        extra_config: str = "",
        verbose: bool = True,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.tls_port: int | None = free_port() if tls_ca is not None else None
        self.tls_ca = tls_ca
        self.log: list[str] = []
        # Debug logging names every packet: useful in tests, a bottleneck in benchmarks.
        self._log_types = ("all",) if verbose else ("error", "warning", "notice", "information")
        self._process: subprocess.Popen[str] | None = None
        self.config_file = directory / "mosquitto.conf"
        self.config_file.write_text(self._config(require_certificate, users, acl, extra_config))

    def _config(
        self, require_certificate: bool, users: dict[str, str] | None, acl: str | None, extra: str
    ) -> str:
        lines = [
            "per_listener_settings false",
            "persistence false",
            "log_dest stderr",
            *(f"log_type {kind}" for kind in self._log_types),
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to "mosquitto"
            f"listener {self.port} {self.host}",
        ]
        if self.tls_ca is not None and self.tls_port is not None:
            ca_file = self.directory / "ca.pem"
            self.tls_ca.cert_pem.write_to_path(str(ca_file))
            server = self.tls_ca.issue_cert(HOST, "localhost")
            cert_file = self.directory / "server.pem"
            key_file = self.directory / "server.key"
            server.cert_chain_pems[0].write_to_path(str(cert_file))
            server.private_key_pem.write_to_path(str(key_file))
            key_file.chmod(0o600)
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {ca_file}",
                f"certfile {cert_file}",
                f"keyfile {key_file}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        if users:
            password_file = self.directory / "passwords"
            password_file.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_file = self.directory / "acl"
            acl_file.write_text(acl)
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        return "\n".join(lines) + "\n" + extra

    def client_cert(self, name: str = "device") -> ClientCert:
        """A client certificate issued by this broker's CA, written next to its config."""
        if self.tls_ca is None:
            raise ValueError("this broker has no TLS listener")
        issued = self.tls_ca.issue_cert(f"{name}.test")
        cert_file = self.directory / f"{name}.pem"
        key_file = self.directory / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert_file))
        issued.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        return ClientCert(cert_file, key_file)

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that signed the broker's certificate."""
        return self.directory / "ca.pem"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and return once it listens (raises with its log if it does not)."""
        if self.running:
            return
        ready = threading.Event()
        process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._process = process

        def drain() -> None:
            # Keep reading: a full pipe would block the broker's logging and so the broker.
            assert process.stdout is not None
            for line in process.stdout:
                self.log.append(line.rstrip("\n"))
                if READY_MARK in line:
                    ready.set()
            ready.set()  # exited: let start() see it

        threading.Thread(target=drain, name="mosquitto-log", daemon=True).start()
        if not ready.wait(START_TIMEOUT) or process.poll() is not None:
            self.stop()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log[-20:]))

    def stop(self) -> None:
        """Terminate the broker and wait for it to exit (its ports are free afterwards)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            # mosquitto 2.0 blocks SIGTERM while in epoll_wait, whose timeout can be many seconds
            # when idle: a connection wakes it so that it sees the signal.
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                pass
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the broker (works while paused); the kernel resets its connections."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same ports."""
        self.stop()
        self.start()

    def logged(self, text: str) -> bool:
        """Whether any broker log line so far contains ``text``."""
        return any(text in line for line in self.log)


MosquittoFactory = Callable[..., Mosquitto]


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Make started brokers: ``mosquitto_factory(tls_ca=..., users=..., acl=...)``."""
    brokers: list[Mosquitto] = []

    def make(**options: object) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **options)  # type: ignore[arg-type]
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """A started plain broker allowing anonymous clients."""
    return mosquitto_factory()


@pytest.fixture
def tls_ca() -> trustme.CA:
    """A fresh trustme certificate authority."""
    return trustme.CA()


__all__ = [
    "ClientCert",
    "Mosquitto",
    "free_port",
    "mosquitto",
    "mosquitto_factory",
    "tls_ca",
]
