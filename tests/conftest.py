"""Suite-wide settings of the tests (every folder's own conftest adds its fixtures).

Garbage collection: many tests call ``gc.collect()`` to prove that native objects are
released (the ``no_leaks`` fixture of tests/acl does it before and after every test). A
full collection walks every tracked object of the process -- pytest's, hypothesis', numpy's,
torch's once a test imported it -- which made those collections most of the suite's time.
At the start of each test module the garbage of the earlier modules is collected and the
survivors are moved to the permanent generation (``gc.freeze``): later collections only
walk the objects created since, so a test still sees every object *it* made (and every
cycle it leaked) collected, at a fraction of the cost. Reference counting is unaffected;
only cycles that were already alive when a module started (long-lived state of earlier
modules) are no longer collected by later collections.
"""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _collect_then_freeze_older_objects():
    gc.collect()            # earlier modules' garbage (and the native handles it holds) first
    gc.freeze()
    yield
