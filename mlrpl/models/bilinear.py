"""Low-rank bilinear attention scores, streamed: e = tanh(x_c ⊙ y_p) · u + const for every class
c and position p, without keeping the (B, C, P, A) tensor.

The semantic decoupling of the SARL trunk (:class:`mlrpl.models.sarl.SemanticDecoupling`) and
CLSL's semantic-guided attention score every (class, position) pair of an image with
``u · tanh(x_c ⊙ y_p)``. Written literally, the (B, C, P, A) product and its tanh are held for
the backward pass: 400 MB per tensor at C = 1000, P = 49, A = 512, batch 4, several of them, and
the memory grows with C. Here the classes are processed in chunks of at most
:data:`CHUNK_ELEMENTS` elements; backward recomputes each chunk's tanh from x and y (the only
tensors kept), so memory is bounded whatever C is and the arithmetic is the literal form's plus
one recomputed tanh. Results equal the literal form to float round-off (tests/test_sarl.py).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# Largest (images x classes x positions x A) block computed at once: 16M elements (64 MB in
# float32), small enough to stay in memory on any machine, large enough that the per-chunk
# overhead is negligible.
CHUNK_ELEMENTS = 1 << 24


def _chunks(x: torch.Tensor, y: torch.Tensor):
    b, c, a = x.shape
    per = max(1, CHUNK_ELEMENTS // max(1, b * y.shape[1] * a))
    return [(s, min(s + per, c)) for s in range(0, c, per)]


class _BilinearTanh(torch.autograd.Function):
    # Every chunk is computed into one of two buffers allocated once per call (a fresh 64 MB
    # tensor per chunk costs more in page faults than the arithmetic).
    @staticmethod
    def forward(ctx, x, y, u, const):
        chunks = _chunks(x, y)
        out = x.new_empty(x.shape[0], x.shape[1], y.shape[1])
        buf = x.new_empty(x.shape[0], chunks[0][1], y.shape[1], x.shape[2])
        for s, e in chunks:
            t = torch.mul(x[:, s:e, None, :], y[:, None, :, :], out=buf[:, :e - s]).tanh_()
            out[:, s:e] = t @ u
        ctx.save_for_backward(x, y, u)
        return out + const

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, y, u = ctx.saved_tensors
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gy = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        gu = torch.zeros_like(u) if ctx.needs_input_grad[2] else None
        chunks = _chunks(x, y)
        shape = (x.shape[0], chunks[0][1], y.shape[1], x.shape[2])
        buf, work = x.new_empty(shape), x.new_empty(shape)
        g = g.contiguous()
        for s, e in chunks:
            xs, gs = x[:, s:e, None, :], g[:, s:e, :, None]                # gs (B, c, P, 1)
            t = torch.mul(xs, y[:, None, :, :], out=buf[:, :e - s]).tanh_()   # (B, c, P, A)
            if gu is not None:
                gu += (gs.reshape(1, -1) @ t.reshape(-1, t.shape[-1]))[0]
            # d e / d (x ⊙ y) = g u (1 - t²)
            d = torch.mul(t, t, out=work[:, :e - s]).neg_().add_(1).mul_(gs).mul_(u)
            if gx is not None:
                gx[:, s:e] = torch.mul(d, y[:, None, :, :], out=t).sum(2)
            if gy is not None:
                gy += torch.mul(d, xs, out=t).sum(1)
        gc = g.sum() if ctx.needs_input_grad[3] else None
        return gx, gy, gu, gc


def bilinear_tanh_scores(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                         const: torch.Tensor) -> torch.Tensor:
    """e[b, c, p] = Σ_a u_a tanh(x[b, c, a] · y[b, p, a]) + const.

    x (B, C, A) (an expanded view is fine), y (B, P, A), u (A,), const scalar -> (B, C, P), with
    gradients for all four. Computed in the promoted dtype of the inputs.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), u.dtype)
    x, y, u = x.to(dtype), y.to(dtype), u.to(dtype)
    return _BilinearTanh.apply(x, y, u, const.to(dtype))
