"""Hypothesis strategies shared by the decoder fuzz (unit) and the HTTP fuzz (integration)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from serving.protocol.datatypes import NUMPY_DTYPES

DATATYPES = sorted(NUMPY_DTYPES)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=40,
)
shapes = st.lists(st.integers(min_value=-2, max_value=6), max_size=4) | st.lists(
    st.integers(min_value=0, max_value=2**70), max_size=70
)


@st.composite
def near_requests(draw: st.DrawFn, names: st.SearchStrategy[str] | None = None) -> bytes:
    """JSON shaped like a v2 request, with any values where its fields go."""
    inputs = draw(st.lists(st.fixed_dictionaries({
        "name": (st.text(max_size=4) if names is None else names) | json_values,
        "shape": shapes | json_values,
        "datatype": st.sampled_from(DATATYPES) | json_values,
        "data": json_values,
    }, optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values)
    }), max_size=3))  # fmt: skip
    document = {"inputs": inputs, "parameters": draw(st.dictionaries(st.text(max_size=4),
                                                                      json_values))}  # fmt: skip
    text = json.dumps(document, allow_nan=True).encode()
    return text + draw(st.binary(max_size=64))
