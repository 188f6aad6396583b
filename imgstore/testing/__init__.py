"""A conformance suite any imgstore driver can run against its real backend.

Subclass :class:`ConformanceTests` (or :class:`ReadConformanceTests` for a
read-only backend) in a pytest module and define a fixture named
``store_under_test`` that yields a :class:`StoreUnderTest`::

    class TestMyDriverConformance(ConformanceTests):
        @pytest.fixture
        def store_under_test(self, tmp_path):
            with Stores.from_config_files(...) as stores:
                yield StoreUnderTest(stores=stores, backend="mine", listing=...)

The library never imports this package; it needs the ``test`` extra (pytest).
"""

from imgstore.testing.conformance import (
    ConformanceTests,
    Payload,
    ReadConformanceTests,
    StoreUnderTest,
)

__all__ = ["ConformanceTests", "Payload", "ReadConformanceTests", "StoreUnderTest"]
