"""Cross-sections of the conformance kit shared by several modules (tests/conftest.py
says what a cross-section is)."""

from __future__ import annotations

TLS_CROSS_SECTION = (
    "test_round_trip[0-known-file]",
    "test_round_trip[3chunk+7-unknown-file]",
    "test_round_trip[64MiB-known-file]",
    "test_read_whole_image[3chunk+7]",
    "test_ranged_read",
    "test_stream_size_mismatch[short-by-one-pieces]",
    "test_stream_size_mismatch[long-by-many-file]",
    "test_failing_source[after-two-chunks-True]",
    "test_failing_source[at-start-False]",
    "test_duplicate_add",
    "test_delete_then_get",
    "test_concurrent_reads",
    "test_concurrent_adds_and_gets",
    "test_race_one_id_threads",
    "test_race_one_id_processes",
    "test_no_secret_in_read_output",
    "test_no_secret_in_write_output",
)
"""What the classes through nginx's TLS port keep of the kit: what a TLS terminator can
change (streams cut, bodies refused early, races answered 502 as in run 23, concurrency
over TLS), not the sizes and ranges the plain class runs on the same server."""
