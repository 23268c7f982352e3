"""NumericFold (the stream apply's bulk merge of numeric records) equals the reference merge.

Random events of the test views (every numeric aggregation: counts, integer and float sums,
means, integer min, float max, ties, nulls, filtered rows) are split into random groups;
for each group, folding the events' records must give exactly the record of
``encode_numeric(merge_values(...))`` (floats are dyadic, so the order of additions does
not matter), including an all-zero stored record first, as the engine does.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_fixtures import DEFS, events
from parity.registry.online.accumulate import EventEvaluator
from parity.registry.online.layout import ViewLayout
from test_online_oracle import dyadic


@settings(max_examples=150, deadline=None)
@given(events(), st.data())
def test_fold_equals_the_reference_merge(rows, data):
    rows = dyadic(rows)
    for view in DEFS.feature_views:
        layout = ViewLayout(DEFS, view)
        evaluator = EventEvaluator(DEFS, view, layout)
        values = [e.value for e in (evaluator.evaluate(r, r["_partition"], r["_offset"]) for r in rows) if e]
        if not values:
            continue
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(values)), max_size=4))) | {0, len(values)})
        groups = [values[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
        blobs, starts = [], []
        for group in groups:
            starts.append(len(blobs))
            blobs.append(layout.zero)  # the stored record of a new tile
            blobs.extend(layout.encode_numeric(v) for v in group)
        folded = layout.fold.reduce(layout.fold.records(blobs), np.asarray(starts))
        for i, group in enumerate(groups):
            want = layout.encode_numeric(layout.merge_values(group))
            assert folded[i].tobytes() == want, (view.name, i, layout.decode_numeric(folded[i].tobytes()),
                                                 layout.decode_numeric(want))
