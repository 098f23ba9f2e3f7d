import pytest

pytest.register_assert_rewrite("saezarr.testing.storage")  # the conformance suite's asserts explain their failures
