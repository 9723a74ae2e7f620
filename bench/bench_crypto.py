"""Web Push decryption: decrypts per second, ours against http-ece and the floor.

The floor is ``decrypt_direct`` from reference/perf-limits.md §1: the same point decode, ECDH,
HKDF and AES-GCM done with bare ``cryptography`` calls and no checks. Every message has its own
sender key, as real pushes do. The variants run interleaved (round robin) so they share the
machine's drift; each figure is the median of the rounds.

Goal (issue 3): ours <= 1.15x the floor's time per message, and >= 1.2x faster than http-ece.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable

import http_ece
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.webpush.crypto import SubscriptionKeys, decrypt, encrypt

ROUNDS = 7  # median of 7, as in perf-limits.md
CALLS_PER_ROUND = 1500  # ~0.2 s per variant and round at ~130 µs per call
DISTINCT_BODIES = 300  # each with its own sender key and salt
SIZES = {"100 B": 100, "3 KB": 3 * 1024}


def _floor(keys: SubscriptionKeys) -> Callable[[bytes], bytes]:
    """perf-limits.md §1 ``decrypt_direct``, verbatim apart from naming."""
    ua_priv, ua_pub, auth = keys.private_key, keys.p256dh, keys.auth_secret

    def decrypt_direct(body: bytes) -> bytes:
        salt, idlen = body[:16], body[20]
        struct.unpack("!L", body[16:20])
        as_pub = body[21 : 21 + idlen]
        ct = body[21 + idlen :]
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_pub)
        ecdh = ua_priv.exchange(ec.ECDH(), peer)
        ikm = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=auth,
            info=b"WebPush: info\x00" + ua_pub + as_pub,
        ).derive(ecdh)
        h = hmac.HMAC(salt, hashes.SHA256())
        h.update(ikm)
        prk = h.finalize()

        def expand(info: bytes, n: int) -> bytes:
            h = hmac.HMAC(prk, hashes.SHA256())
            h.update(info + b"\x01")
            return h.finalize()[:n]

        cek = expand(b"Content-Encoding: aes128gcm\x00", 16)
        nonce = expand(b"Content-Encoding: nonce\x00", 12)
        pt = AESGCM(cek).decrypt(nonce, ct, None)
        return pt[: pt.rindex(b"\x02")]

    return decrypt_direct


def _variants(keys: SubscriptionKeys) -> dict[str, Callable[[bytes], bytes]]:
    private_key, auth = keys.private_key, keys.auth_secret
    return {
        "floor (bare cryptography)": _floor(keys),
        "ours: SubscriptionKeys.decrypt": keys.decrypt,
        "ours: decrypt()": lambda body: decrypt(body, private_key=private_key, auth_secret=auth),
        "http_ece.decrypt": lambda body: http_ece.decrypt(
            body, private_key=private_key, auth_secret=auth, version="aes128gcm"
        ),
    }


def _time_round(fn: Callable[[bytes], bytes], bodies: list[bytes]) -> float:
    """Seconds per call over CALLS_PER_ROUND calls cycling through ``bodies``."""
    n = len(bodies)
    started = time.perf_counter()
    for i in range(CALLS_PER_ROUND):
        fn(bodies[i % n])
    return (time.perf_counter() - started) / CALLS_PER_ROUND


def _measure(keys: SubscriptionKeys, size: int) -> dict[str, float]:
    payload = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
    bodies = [
        encrypt(payload, p256dh=keys.p256dh, auth_secret=keys.auth_secret)
        for _ in range(DISTINCT_BODIES)
    ]
    variants = _variants(keys)
    for name, fn in variants.items():  # correctness first, and a warm-up
        for body in bodies[: CALLS_PER_ROUND // 10]:
            assert fn(body) == payload, name
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            samples[name].append(_time_round(fn, bodies))
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    keys = SubscriptionKeys.generate()
    print(
        f"median of {ROUNDS} interleaved rounds x {CALLS_PER_ROUND} decrypts, "
        f"{DISTINCT_BODIES} distinct sender keys per size\n"
    )
    header = f"| {'variant':<32} | {'payload':>7} | {'µs/msg':>7} | {'msg/s':>7} |"
    print(header + " time vs floor | http-ece time / this |")
    print("|" + "---|" * 6)
    for label, size in SIZES.items():
        results = _measure(keys, size)
        floor = results["floor (bare cryptography)"]
        reference = results["http_ece.decrypt"]
        for name, seconds in results.items():
            print(
                f"| {name:<32} | {label:>7} | {seconds * 1e6:7.1f} | {1 / seconds:7.0f} |"
                f" {seconds / floor:12.2f}x | {reference / seconds:19.2f}x |"
            )
    print("\ngoal: ours <= 1.15x floor time; http-ece time / ours >= 1.2x")
