"""Low-rank bilinear attention scores, streamed: e[n, p, c] = Σ_a u_a tanh(a[n, p, a] · b[n, c, a])
for every position p and class c, without the (N, P, C, A) tensor.

The semantic decoupling of the SARL trunk (:class:`mlrpl.models.sarl.SemanticDecoupling`) and
CLSL's semantic-guided attention (:class:`mlrpl.methods.clsl.LowRankBilinearAttention`) score every
(position, class) pair of an image with ``u · tanh(a_p ⊙ b_c)``. Written literally, the
(N, P, C, A) product and its tanh are held for the backward pass: 3.2 GB per tensor for CLSL at
C = 1000 (P = 196, A = 1024, batch 4), several of them, growing with C. Here the work goes over
blocks of classes (and tiles of positions when one class is too wide) of at most
:data:`ATTENTION_CHUNK_ELEMENTS_CPU` / :data:`ATTENTION_CHUNK_ELEMENTS` elements; only a, b and u
are saved and backward recomputes each block, so memory is bounded whatever C is. tanh is taken as
2σ(2x) − 1 (the same function; σ is several times cheaper than tanh on CPU), per-class products
as batched matrix products, and on CPU the blocks are dealt to single-threaded worker threads, one
per intra-op thread. Results equal the literal form to float round-off (tests/test_clsl_stream.py,
tests/test_sarl.py).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch


#: Elements (floats) of one block of the streamed scores (:func:`bilinear_tanh_scores`).
#: CPU: 2^20 (4 MB of float32: 5 classes x 196 tokens x 1024 at the released widths), small enough
#: for a block's elementwise passes to run from cache, large enough to keep the loop's own cost
#: small (2^19 - 2^21 measured within 10% of each other on 2 cores). Other devices: 2^25 (128 MB),
#: fewer and larger kernels. A forward pass holds one such buffer per worker, a backward pass two.
ATTENTION_CHUNK_ELEMENTS_CPU = 1 << 20
ATTENTION_CHUNK_ELEMENTS = 1 << 25
# Blocks of at most this many classes add Σ_c y b_c to grad_a class by class (one fused pass each);
# larger ones (tiny P·A) through one matrix product.
_CLASS_LOOP_MAX = 16


def is_traced() -> bool:
    """Under tracing, torch.compile or export (ONNX, torch.export): the literal layouts there,
    plain tensor operations without a branch on sizes, a Python loop or threads."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def _chunk_elements(device: torch.device) -> int:
    return ATTENTION_CHUNK_ELEMENTS_CPU if device.type == "cpu" else ATTENTION_CHUNK_ELEMENTS


def _dtypes(*tensors: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(output dtype, compute dtype): the inputs' promoted dtype; 16-bit floats (autocast) are
    computed in float32 block by block and returned in their own dtype."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        out = torch.promote_types(out, t.dtype)
    return out, (torch.float32 if out in (torch.float16, torch.bfloat16) else out)


def _block_sizes(n: int, p: int, c: int, a: int, budget: int) -> tuple[int, int, int]:
    """(images, classes, tokens) of a block of at most ``budget`` elements once multiplied by A (at
    least one token x one class): whole token ranges and as many classes as fit, whole images when
    every class fits, tiles of tokens when a single class does not."""
    tp = max(1, min(p, budget // max(a, 1)))
    kc = max(1, min(c, budget // (tp * max(a, 1))))
    nb = max(1, min(n, budget // (kc * tp * max(a, 1)))) if (tp >= p and kc >= c) else 1
    return nb, kc, tp


def _blocks(n: int, p: int, c: int, a: int, budget: int):
    """(n0, n1, c0, c1, p0, p1) of every block, the token tiles of one (images, classes) range
    together."""
    nb, kc, tp = _block_sizes(n, p, c, a, budget)
    for n0 in range(0, n, nb):
        for c0 in range(0, c, kc):
            for p0 in range(0, p, tp):
                yield n0, min(n, n0 + nb), c0, min(c, c0 + kc), p0, min(p, p0 + tp)


# ---- CPU workers: the blocks split over threads whose operations run single-threaded ------------
# Many short operations, each split over the intra-op threads, pay a synchronisation per operation,
# and on a busy machine one descheduled thread stalls every one of them (measured on 2 cores with a
# second process running: 5 - 30x slower). Whole blocks per thread, each thread's operations on one
# core, cost no more on an idle machine and degrade only with the share of the machine left.
_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _single_threaded(barrier: threading.Barrier) -> None:
    torch.get_num_threads()     # the thread's lazy intra-op initialisation first, then one thread
    torch.set_num_threads(1)
    barrier.wait()


def _pool(workers: int) -> ThreadPoolExecutor:
    """``workers`` threads whose operations run single-threaded, made once per process and worker
    count (a forked child makes its own). Making them sets the process-wide intra-op thread count,
    restored before returning; the calling thread's own setting never changes."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        if key not in _POOLS:
            for old in [k for k in _POOLS if k[0] != key[0]]:
                del _POOLS[old]                  # a forked child's copies, without their threads
            threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="mlrpl-bilinear")
            barrier = threading.Barrier(workers)   # every thread starts and takes its setting now
            try:
                for f in [pool.submit(_single_threaded, barrier) for _ in range(workers)]:
                    f.result()
            finally:
                torch.set_num_threads(threads)
            _POOLS[key] = pool
        return _POOLS[key]


def _run(fn, parts: list, device: torch.device) -> list:
    """fn over ``parts`` without autograd or autocast, in the caller's inference mode (all three are
    per thread): in the calling thread for one part, else one part per worker thread."""
    inference = torch.is_inference_mode_enabled()

    def call(part):
        with torch.inference_mode(inference), torch.no_grad(), \
                torch.autocast(device.type, enabled=False):
            return fn(part)
    if len(parts) == 1:
        return [call(parts[0])]
    return list(_pool(torch.get_num_threads()).map(call, parts))


def _parts(n: int, p: int, c: int, a: int, budget: int, device: torch.device) -> list:
    """The blocks dealt to the workers (CPU: as many as intra-op threads), each (images, classes)
    range's token tiles to one worker (they add into the same grad_b rows)."""
    groups: dict = {}
    for blk in _blocks(n, p, c, a, budget):
        groups.setdefault(blk[:4], []).append(blk)
    groups = list(groups.values())
    workers = min(len(groups), torch.get_num_threads() if device.type == "cpu" else 1)
    return [[b for g in groups[i::workers] for b in g] for i in range(max(workers, 1))]


def _forward_blocks(blocks, a2, b, u_rows, e, size):
    k = a2.shape[-1]
    buf = torch.empty(size, dtype=a2.dtype, device=a2.device)
    for n0, n1, c0, c1, p0, p1 in blocks:
        ni, ki, ti = n1 - n0, c1 - c0, p1 - p0
        x = buf[:ni * ki * ti * k].view(ni, ki, ti, k)
        torch.mul(b[n0:n1, c0:c1, None, :], a2[n0:n1, None, p0:p1, :], out=x)
        x.sigmoid_()
        # one vector-matrix product per class, as a batch (one long matrix-vector product would
        # not be split over threads)
        xt = x.view(ni * ki, ti, k).transpose(1, 2)
        et = e[n0:n1, c0:c1, p0:p1]
        if et.is_contiguous():
            torch.bmm(u_rows[:ni * ki], xt, out=et.view(ni * ki, 1, ti))
        else:
            et.copy_(torch.bmm(u_rows[:ni * ki], xt).view(ni, ki, ti))


def _backward_blocks(blocks, a, a2, b, gt, gb, size, rows):
    """Σ_c y b_c (this worker's share, (N, P, A)) and Σ g s per class slot ((rows, 1, A)); Σ_p y a_p
    into ``gb``, whose rows no other worker touches."""
    n, p, k = a.shape
    dt, dev = a.dtype, a.device
    buf = torch.empty(size, dtype=dt, device=dev)
    tmp = torch.empty(size, dtype=dt, device=dev)
    ga = torch.zeros(n, p, k, dtype=dt, device=dev)
    gu = torch.zeros(rows, 1, k, dtype=dt, device=dev)
    ones = torch.ones(max(rows, p), dtype=dt, device=dev)
    for n0, n1, c0, c1, p0, p1 in blocks:
        ni, ki, ti = n1 - n0, c1 - c0, p1 - p0
        x = buf[:ni * ki * ti * k].view(ni, ki, ti, k)
        w = tmp[:ni * ki * ti * k].view(ni, ki, ti, k)
        bc = b[n0:n1, c0:c1, None, :]                             # (ni, ki, 1, A)
        gct = gt[n0:n1, c0:c1, p0:p1]                             # (ni, ki, ti)
        torch.mul(bc, a2[n0:n1, None, p0:p1, :], out=x)
        x.sigmoid_()                                              # s
        gu[:ni * ki].baddbmm_(gct.reshape(ni * ki, 1, ti), x.view(ni * ki, ti, k))   # Σ g s
        x.addcmul_(x, x, value=-1).mul_(gct.unsqueeze(-1))       # y = g s (1 − s)
        gat = ga[n0:n1, p0:p1]                                    # Σ_c y b_c
        if ki <= _CLASS_LOOP_MAX:
            for xj, bj in zip(x.unbind(1), bc.unbind(1)):
                gat.addcmul_(xj, bj)
        else:
            torch.mul(x, bc, out=w)
            gat.view(ni, 1, ti * k).baddbmm_(ones[:ki].expand(ni, 1, ki), w.view(ni, ki, ti * k))
        torch.mul(x, a[n0:n1, None, p0:p1, :], out=w)            # Σ_p y a_p
        gb[n0:n1, c0:c1].view(ni * ki, 1, k).baddbmm_(ones[:ti].expand(ni * ki, 1, ti),
                                                      w.view(ni * ki, ti, k))
    return ga, gu


def _geometry(a: torch.Tensor, b: torch.Tensor, budget: Optional[int]):
    """(N, P, C, A, device, budget, block sizes) of a problem a (N, P, A), b (N, C, A)."""
    n, p, k = a.shape
    c = b.shape[1]
    budget = budget or _chunk_elements(a.device)
    return n, p, c, k, a.device, budget, _block_sizes(n, p, c, k, budget)


def _scores_forward(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor,
                    budget: Optional[int] = None) -> torch.Tensor:
    """e_{n,p,c} = Σ_k u_k tanh(a_{n,p,k} b_{n,c,k}), block by block, with tanh(x) = 2σ(2x) − 1
    (the same function; σ is several times faster than tanh on CPU): e = 2 σ(2a ⊙ b) · u − Σ u.
    Nothing of size (N, P, C, A) is allocated, one block per worker at a time."""
    out_dtype, dt = _dtypes(a, b, u)
    a, b, u = a.detach(), b.detach(), u.detach()
    n, p, c, k, dev, budget, (nb, kc, tp) = _geometry(a, b, budget)
    with torch.autocast(dev.type, enabled=False):
        a2, b, u = (2 * a).to(dt), b.to(dt).contiguous(), u.to(dt)
        u_rows = (2 * u).expand(nb * kc, 1, k).contiguous()
        e = torch.empty(n, c, p, dtype=dt, device=dev)           # class-major, as the blocks
        _run(lambda blocks: _forward_blocks(blocks, a2, b, u_rows, e, nb * kc * tp * k),
             _parts(n, p, c, k, budget, dev), dev)
        e.sub_(u.sum())
    return e.transpose(1, 2).to(out_dtype).contiguous()


def _scores_backward(g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, u: torch.Tensor,
                     budget: Optional[int] = None):
    """Gradients of :func:`_scores_forward`'s e with respect to a, b and u, recomputing
    s = σ(2a ⊙ b) block by block. With tanh(ab) = 2s − 1 and 1 − tanh² = 4 s(1 − s), and
    y = g s(1 − s): grad_a = 4u ⊙ Σ_c y b_c, grad_b = 4u ⊙ Σ_p y a_p, grad_u = 2 Σ g s − Σ g."""
    _, dt = _dtypes(a, b, u)
    g, a, b, u = g.detach(), a.detach(), b.detach(), u.detach()
    n, p, c, k, dev, budget, (nb, kc, tp) = _geometry(a, b, budget)
    with torch.autocast(dev.type, enabled=False):
        a_, b_ = a.to(dt).contiguous(), b.to(dt).contiguous()
        a2 = 2 * a_
        gt = g.to(dt).transpose(1, 2).contiguous()                # (N, C, P), as the blocks
        gb = torch.zeros(n, c, k, dtype=dt, device=dev)
        shares = _run(lambda blocks: _backward_blocks(blocks, a_, a2, b_, gt, gb,
                                                      nb * kc * tp * k, nb * kc),
                      _parts(n, p, c, k, budget, dev), dev)
        ga, gu = shares[0]
        for ga_i, gu_i in shares[1:]:
            ga.add_(ga_i)
            gu.add_(gu_i)
        four_u = 4 * u.to(dt)
        ga.mul_(four_u)
        gb.mul_(four_u)
        gu = gu.sum((0, 1)).mul_(2).sub_(gt.sum())
    return ga.to(a.dtype), gb.to(b.dtype), gu.to(u.dtype)


class _BilinearTanhScores(torch.autograd.Function):
    """Autograd of :func:`bilinear_tanh_scores`: saves a, b and u only; backward recomputes the
    blocks."""

    @staticmethod
    def forward(ctx, a, b, u, budget):
        ctx.save_for_backward(a, b, u)
        ctx.budget = budget
        return _scores_forward(a, b, u, budget)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        a, b, u = ctx.saved_tensors
        ga, gb, gu = _scores_backward(g, a, b, u, ctx.budget)
        need = ctx.needs_input_grad
        return (ga if need[0] else None, gb if need[1] else None, gu if need[2] else None, None)


def bilinear_tanh_scores(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor,
                         chunk_elements: Optional[int] = None) -> torch.Tensor:
    """e (N, P, C) = tanh(a_p ⊙ b_c) · u for a (N, P, A), b (N, C, A), u (A,), streamed: the
    (N, P, C, A) tensor of the literal form is never held, only blocks of at most
    ``chunk_elements`` elements (default: :data:`ATTENTION_CHUNK_ELEMENTS_CPU` on CPU,
    :data:`ATTENTION_CHUNK_ELEMENTS` elsewhere), and backward recomputes them from a, b and u, the
    only tensors saved (none under ``torch.no_grad``). Once differentiable.

    >>> a, b, u = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(4)
    >>> e = bilinear_tanh_scores(a, b, u, chunk_elements=8)
    >>> torch.allclose(e, torch.tanh(a[:, :, None] * b[:, None]) @ u, atol=1e-5)
    True
    """
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or u.requires_grad):
        return _BilinearTanhScores.apply(a, b, u, chunk_elements)
    return _scores_forward(a, b, u, chunk_elements)
