"""Input pipelines over built datasets: grain over the TFDS ArrayRecord data source.

Training is a pure function of (seed, step), whatever the number of hosts: one global
order of examples (a new permutation of the split each epoch), cut into global batches;
example i of that order is augmented with a generator seeded from (seed, i); host h of n
reads and augments only its slice h of each global batch. A run on one host and on many
therefore sees the same global batches. The iterator's state is its position, so it can be
saved with a checkpoint and restored to see exactly the batches an uninterrupted run sees.
`global_batch` assembles the hosts' slices into global arrays on the device mesh.

Evaluation shards the split by stride: host h reads examples h, h+n, h+2n, ...
"""

from __future__ import annotations

import functools
import os

import grain
import jax
import numpy as np

from asanet_jax.data import io, transforms
from asanet_jax.data.build import Source


def check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")


def host_shard(num_examples: int, process_index: int, process_count: int) -> slice:
    """Examples of this host: a strided slice, disjoint across hosts, covering the split."""
    check_process(process_index, process_count)
    if num_examples < process_count:
        raise io.DataError(f"{num_examples} examples cannot be split over {process_count} hosts")
    return slice(process_index, None, process_count)


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {process_count} processes"
        )
    return global_batch // process_count


def train_dataset(
    source: Source,
    global_batch: int,
    seed: int,
    augment: transforms.Augment | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int | None = None,
    prefetch: int = 16,
) -> grain.IterDataset:
    """Endless augmented training batches for this host: dicts of (local_batch, H, W, ...).

    `num_threads` reader/augmentation threads (default: one per CPU core; OpenCV and zlib
    release the GIL, so threads scale)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    augment = augment or transforms.Augment.for_spec(source.spec)
    local = local_batch_size(global_batch, process_count)
    check_process(process_index, process_count)
    examples = grain.MapDataset.source(source.records).shuffle(seed=seed).repeat(None)
    examples = examples.random_map(
        functools.partial(_augment, spec=source.spec, augment=augment), seed=seed
    )

    def host_example(j: int):
        # Example j of this host: position j mod local of its slice of global batch j // local.
        return examples[(j // local) * global_batch + process_index * local + j % local]

    ds = grain.MapDataset.range(len(examples) // process_count).map(host_example)
    ds = ds.batch(local, drop_remainder=True)
    threads = num_threads or os.cpu_count() or 1
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))


def _augment(record, rng, spec, augment):
    return transforms.train_example(record, rng, spec, augment)


def eval_dataset(
    source: Source,
    batch_size: int = 1,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
) -> grain.IterDataset:
    """One pass over this host's share of the split, whole images, in order.

    The last batch may be smaller. Images of a batch must share a size; a dataset of mixed
    sizes is evaluated with batch_size=1 (padding would change the predictions).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(source.records)
    ds = ds[host_shard(len(ds), process_index, process_count)]
    ds = ds.map(functools.partial(_evaluate, spec=source.spec))
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=_stack_same_size)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8))


def _evaluate(record, spec):
    example = transforms.eval_example(record, spec)
    example["file_name"] = record["file_name"]
    return example


def _stack_same_size(examples: list[dict]) -> dict:
    shapes = {e["label"].shape for e in examples}
    if len(shapes) > 1:
        names = [e["file_name"] for e in examples]
        raise io.DataError(
            f"images of different sizes {sorted(shapes)} in one evaluation batch ({names}); "
            "evaluate with batch_size=1"
        )
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def global_batch(local: dict, sharding: jax.sharding.Sharding) -> dict:
    """Assemble each host's local batch into global arrays laid out by `sharding`."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
        if k != "file_name"
    }
