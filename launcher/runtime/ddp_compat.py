"""The one door to torch DDP's private reducer API: the gradient buckets, laid out once.

DDP splits the gradients into buckets and all-reduces each bucket as one buffer. Its first
iteration reduces in one bucket; at the second forward it rebuilds the buckets in the order the
first backward made the gradients ready. A resumed attempt is a new DDP, so its first step reduces
with the first layout while the uninterrupted run, at that step, uses the rebuilt one. A ring
all-reduce sums each chunk of the buffer starting from a different rank, so an element's summation
order depends on its offset: at 3 or more ranks the resumed step differs in the last bits.

`fix_bucket_layout` lays the buckets out before the first step, from an order that depends on the
model alone (its parameters last to first: the order a backward pass usually makes their
gradients ready, which DDP's own first layout assumes too), and DDP never changes them after:
every attempt reduces with one layout. DDP records the order in which its gradient hooks fire in
a backward pass with gradient sync and rebuilds from it; here a backward of zeros into each
parameter, one by one in that order, fires the hooks in that order, the reducer all-reduces the
zeros once (one collective an attempt), and `_rebuild_buckets` lays the buckets out at once. No
forward runs: weights, buffers, optimizer and every RNG are untouched; the gradients are put back,
and the job's own gradient hooks do not run.

The other way to keep the layout, `find_unused_parameters=True` (DDP never rebuilds then), costs
every step a walk of the autograd graph and an all-reduce of the used-parameter map; launch keeps
it for models where some parameters get no gradient (`job.find_unused_parameters`) and where this
module does not apply (`supported` says), so the buckets stay fixed either way.
"""

from __future__ import annotations

from typing import Any

import torch

WRITTEN_FOR = "2.14"  # the torch major.minor whose reducer these touchpoints were written and tested for


def supported(ddp: Any) -> bool:
    """Whether `fix_bucket_layout` applies: this torch, DDP's C++ reducer, no unused-parameter
    search, no static graph, no DDP mixed precision, no sparse gradients."""
    reducer = getattr(ddp, "reducer", None)
    return (available()
            and all(callable(getattr(reducer, name, None)) for name in ("_rebuild_buckets", "prepare_for_backward"))
            and not getattr(ddp, "_use_python_reducer", True)
            and not ddp.find_unused_parameters and not ddp.static_graph
            and getattr(ddp, "mixed_precision", None) is None
            and not any(getattr(m, "sparse", False) for m in ddp.module.modules()
                        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))))


def reducer_parameters(ddp: Any) -> list[torch.nn.Parameter]:
    """The parameters DDP reduces: those that need a gradient and are not ignored, each once."""
    ignored = getattr(ddp, "parameters_to_ignore", set())
    return [p for name, p in ddp.module.named_parameters() if p.requires_grad and name not in ignored]


def fix_bucket_layout(ddp: Any) -> bool:
    """Lay DDP's gradient buckets out now, for good (module docstring); every rank calls it at the
    same point, before the first training step. False (nothing done) where it does not apply."""
    if not supported(ddp) or not ddp.require_backward_grad_sync:
        return False
    params = reducer_parameters(ddp)
    if not params:
        return False
    saved = [p.grad for p in params]
    # The job's own gradient hooks (a gradient logger, an optimizer step in backward) must not see
    # these zeros: their dicts, which autograd reads at each call, are emptied meanwhile.
    hooks = [d for p in params for d in (p._backward_hooks, getattr(p, "_post_accumulate_grad_hooks", None)) if d]
    kept = [dict(d) for d in hooks]
    try:
        for p in params:
            p.grad = None
        for d in hooks:
            d.clear()
        with torch.enable_grad():
            ddp.reducer.prepare_for_backward([])  # expect the hooks, as DDP's forward does with sync on
            for p in reversed(params):
                p.backward(torch.zeros_like(p))  # fires p's gradient hook: DDP records it as ready next
        rebuilt = bool(ddp.reducer._rebuild_buckets())
        ddp._has_rebuilt_buckets = rebuilt
    finally:
        for d, entries in zip(hooks, kept, strict=True):
            d.update(entries)
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad
    return rebuilt


def available() -> bool:
    """Whether this torch's reducer has what `fix_bucket_layout` uses (checked before DDP is built)."""
    import torch.distributed as dist

    reducer = getattr(dist, "Reducer", None)
    return torch.__version__.startswith(WRITTEN_FOR + ".") and callable(getattr(reducer, "_rebuild_buckets", None))
