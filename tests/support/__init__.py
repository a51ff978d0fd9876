"""Test support for tests/, tfds_builders/ and benchmarks/: golden parity, fake datasets."""
