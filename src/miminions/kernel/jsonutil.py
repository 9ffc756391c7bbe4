"""A fast compact JSON encoder, shared by the store and the messaging hot paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def reject(value: Any) -> Any:
    """The ``default`` of a strict encoder: anything that is not JSON is an error."""
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def make_encoder(
    default: Callable[[Any], Any] = reject, *, allow_nan: bool = True
) -> Callable[[Any], str]:
    """Return a compact JSON encoder (no spaces, non-ASCII kept) calling ``default``.

    ``json.dumps``/``JSONEncoder.encode`` build a fresh C encoder on every call, which costs
    more than encoding a small dict; hot paths encode a value per message or row, so the C
    encoder is built once. That constructor is an implementation detail of the ``json``
    module, so it is checked against the public encoder here and not used if they differ.
    With ``allow_nan`` false, NaN and infinities raise ValueError (strict JSON).
    """
    public = json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=False, default=default, allow_nan=allow_nan
    ).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return public
    try:
        # markers=None: no cycle bookkeeping (a cycle still fails, as RecursionError).
        chunks = make(None, default, basestring, None, ":", ",", False, False, allow_nan)

        def fast(value: Any) -> str:
            return "".join(chunks(value, 0))

        sample = {"s": 'é"\n', "i": [1, -2.5, 1e300, None, True, False], "d": {"1": {}}}
        if fast(sample) != public(sample) or fast("x") != public("x"):
            return public
    except Exception:  # a different json implementation: use the public API
        return public
    return fast


__all__ = ["make_encoder", "reject"]
