"""Real public key material (JWK `n`/`e`, or `crv`/`x`/`y`) for each key version, made once and cached."""

from __future__ import annotations

import base64
import threading
import zlib

from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEFAULT_RSA_SIZE = 2048
_CURVES: dict[int, tuple[str, ec.EllipticCurve]] = {
    256: ("P-256", ec.SECP256R1()),
    384: ("P-384", ec.SECP384R1()),
    521: ("P-521", ec.SECP521R1()),
}
_CURVE_BY_NAME = {name: (size, curve) for size, (name, curve) in _CURVES.items()}


def _b64url(number: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (number.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(number.to_bytes(size, "big")).decode().rstrip("=")


class KeyMaterial:
    """Generates a key pair per version on first use and keeps only its public part.

    A 2048-bit RSA key takes about 50 ms to make, so a fleet of thousands of versions would spend
    minutes on it; with `pool_size` set, versions share that many keys per type and size (chosen by a
    hash of the kid), which keeps a benchmark's cost bounded while every key stays real.
    """

    def __init__(self, *, pool_size: int | None = None) -> None:
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, str], dict[str, str]] = {}

    def public_jwk(self, kid: str, kty: str, key_size: int | None = None, crv: str | None = None) -> dict[str, str]:
        """The public members of the version's JSON Web Key: `n`, `e` for RSA; `crv`, `x`, `y` for EC; none for oct."""
        family = kty.upper().removesuffix("-HSM")
        if family == "RSA":
            size = key_size or DEFAULT_RSA_SIZE
        elif family == "EC":
            size = _CURVE_BY_NAME[crv][0] if crv in _CURVE_BY_NAME else (key_size if key_size in _CURVES else 256)
        else:  # symmetric keys never show their material
            return {}
        slot = kid.lower() if self._pool_size is None else str(zlib.crc32(kid.lower().encode()) % self._pool_size)
        cache_key = (family, size, slot)
        with self._lock:
            found = self._cache.get(cache_key)
        if found is None:
            found = _generate(family, size)
            with self._lock:
                found = self._cache.setdefault(cache_key, found)
        return dict(found)


def _generate(family: str, size: int) -> dict[str, str]:
    if family == "RSA":
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=size).public_key().public_numbers()
        return {"n": _b64url(numbers.n), "e": _b64url(numbers.e)}
    name, curve = _CURVES[size]
    point = ec.generate_private_key(curve).public_key().public_numbers()
    length = (curve.key_size + 7) // 8
    return {"crv": name, "x": _b64url(point.x, length), "y": _b64url(point.y, length)}
