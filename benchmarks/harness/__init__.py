"""Benchmark harness of torchshift2: ``python benchmarks/bench.py`` (or
``python -m benchmarks.harness``; ``make bench``, ``make bench-fuzz``).

For every (shape, memory layout, dtype) it times, in one process and one run, with
``torch.utils.benchmark.Timer`` (all threads, warm-up, medians, inputs rotated):

- the floors ``x.clone()`` (allocates, so page faults included) and ``out.copy_(x)``
  (an existing buffer);
- our op under each weight distribution (``uniform1.5``, ``sparse``, ``wide``): SSL and
  active forward, SSL and active forward+backward (grad_input and grad_weight from a
  precomputed grad_output), and ``shift_`` (in place) with the ``sparse`` weights;
- the pure-torch reference forward, eager and under ``torch.compile``;
- a 3x3 (3 or 3x3x3) depthwise convolution forward and forward+backward, in the row's
  layout and in the other dense one, run at least twice because its speed is
  allocator-bimodal.

Each row carries its ratios to the floors, to the depthwise conv in the same and in its
faster layout, and (outside NCHW) to our own NCHW time. Before timing it checks our forward
and backward against the reference and stops if they disagree: a benchmark never reports a
broken kernel. ``--fuzz N --seed S`` draws the cases at random instead and summarises the
worst ratios; ``--scaling`` times the forward at 1x/4x/16x of a base size with one thread
and all threads. See ``benchmarks/README.md``.

Modules: :mod:`.cases` (shapes, cases, layouts, distributions, tensors), :mod:`.check`
(against the reference), :mod:`.timing`, :mod:`.measure` (one row group), :mod:`.rows`
(result rows and ratios), :mod:`.fuzz` (the random draw), :mod:`.report` (tables, summary,
files, plot), :mod:`.scaling`, :mod:`.machine` (machine info), :mod:`.cli` (options and
modes). Nothing is imported here, so that ``benchmarks.harness.machine`` stays cheap to
import for the other scripts.
"""
