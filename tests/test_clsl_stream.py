"""clsl's streamed SGFE attention and factored SRFL (docs/methods/clsl.md#computation): the blocked
tanh(a_p ⊙ b_c) · u equals the literal form and its gradients (gradcheck in float64, and against the
unchunked and two-layer forms in float32), saves only a, b and u, holds nothing under no_grad, gives
the same numbers on worker threads and in the caller, runs under autocast and on CUDA; the method's
outputs and gradients do not depend on which form runs, and tracing / export see the literal form."""
import doctest
import os
import warnings

import numpy as np
import pytest
import torch

import mlrpl.methods.clsl as clsl_module
import mlrpl.models.bilinear as bilinear_module
from mlrpl.methods import create_method
from mlrpl.methods.base import MethodContext
from mlrpl.methods.clsl import LowRankBilinearAttention
from mlrpl.models.bilinear import _blocks, bilinear_tanh_scores


def literal(a, b, u):
    return torch.tanh(a[:, :, None, :] * b[:, None, :, :]) @ u


def inputs(n, p, c, k, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, p, k, generator=g, dtype=dtype).to(device).requires_grad_()
    b = torch.randn(n, c, k, generator=g, dtype=dtype).to(device).requires_grad_()
    u = torch.randn(k, generator=g, dtype=dtype).to(device).requires_grad_()
    return a, b, u


# (N, P, C, A) and chunk budgets covering every blocking: one block; several images per block;
# blocks of classes, summed per class (<= 16 a block) or by a matrix product (> 16), with a shorter
# last block; tiles of tokens (budget below P·A); and one element per block (budget below A).
CASES = [((2, 3, 5, 4), None), ((3, 2, 3, 4), 2 * 3 * 4 * 2), ((2, 3, 9, 4), 3 * 4 * 3),
         ((2, 3, 45, 4), 3 * 4 * 20), ((2, 5, 3, 4), 4 * 2), ((2, 3, 2, 4), 1)]


@pytest.mark.parametrize("shape, budget", CASES, ids=[str(c[1]) for c in CASES])
def test_gradcheck_float64(shape, budget):
    a, b, u = inputs(*shape)
    torch.autograd.gradcheck(lambda a, b, u: bilinear_tanh_scores(a, b, u, budget), (a, b, u))
    torch.testing.assert_close(bilinear_tanh_scores(a, b, u, budget), literal(a, b, u),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, budget", CASES, ids=[str(c[1]) for c in CASES])
def test_blocks_cover_every_element_once_within_the_budget(shape, budget):
    n, p, c, k = shape
    budget = budget or 1 << 19
    seen = torch.zeros(n, p, c, dtype=torch.int64)
    for n0, n1, c0, c1, p0, p1 in _blocks(n, p, c, k, budget):
        assert (n1 - n0) * (c1 - c0) * (p1 - p0) * k <= max(budget, k)
        seen[n0:n1, p0:p1, c0:c1] += 1
    assert bool((seen == 1).all())


def test_medium_float32_equals_the_unchunked_and_literal_forms(monkeypatch):
    torch.manual_seed(0)
    att = LowRankBilinearAttention(12, 10, 24, chunk_elements=13 * 24 * 3)  # 3 classes a block
    x, v = torch.randn(3, 13, 12), torch.randn(3, 37, 10)
    monkeypatch.setattr(clsl_module, "LITERAL_MAX_ELEMENTS", 0)            # always streamed
    params = list(att.parameters())
    g = torch.randn(3, 13, 37)
    outs = {}
    for name, f in (("streamed", att), ("unchunked", att.unchunked), ("reference", att.reference)):
        e = f(x, v)
        outs[name] = (e.detach(), torch.autograd.grad((e * g).sum(), params))
    e0, g0 = outs["streamed"]
    for name in ("unchunked", "reference"):
        e1, g1 = outs[name]
        torch.testing.assert_close(e0, e1, rtol=1e-5, atol=2e-6)
        for p, q in zip(g0, g1):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    # b₂ enters only the constant, whose gradient is the sum of grad_e
    torch.testing.assert_close(g0[-1][0], g.sum(), rtol=1e-5, atol=1e-5)
    att.chunk_elements = None
    torch.testing.assert_close(att(x, v), e0, rtol=1e-5, atol=2e-6)


def test_saves_only_a_b_u_and_nothing_under_no_grad():
    a, b, u = inputs(2, 7, 11, 16, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        e = bilinear_tanh_scores(a, b, u, 7 * 16 * 2)
    assert sorted(t.shape for t in saved) == sorted([a.shape, b.shape, u.shape])
    e.sum().backward()
    assert a.grad is not None and b.grad is not None and u.grad is not None
    saved.clear()
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        e2 = bilinear_tanh_scores(a, b, u, 7 * 16 * 2)
    assert not saved and e2.grad_fn is None and not e2.requires_grad
    torch.testing.assert_close(e2, e.detach())
    with torch.inference_mode():
        torch.testing.assert_close(bilinear_tanh_scores(a, b, u, 7 * 16 * 2), e.detach())
    # only the inputs that need a gradient get one
    a2 = a.detach().requires_grad_()
    bilinear_tanh_scores(a2, b.detach(), u.detach(), 7 * 16 * 2).sum().backward()
    assert a2.grad is not None


def test_worker_threads_match_one_thread_and_leave_the_callers_setting():
    """On CPU the blocks go to one worker per intra-op thread (operations single-threaded there);
    one intra-op thread runs them in the caller. Same numbers; the caller's setting unchanged."""
    a, b, u = inputs(3, 7, 23, 16, dtype=torch.float32)
    g = torch.randn(3, 7, 23)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (3, 1):
            torch.set_num_threads(n)
            e = bilinear_tanh_scores(a, b, u, 7 * 16 * 3)
            results.append((e.detach(), torch.autograd.grad((e * g).sum(), (a, b, u))))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    pool = bilinear_module._POOLS[(os.getpid(), 3)]
    assert pool.submit(torch.get_num_threads).result() == 1
    (e3, g3), (e1, g1) = results
    torch.testing.assert_close(e3, e1)
    torch.testing.assert_close(e3, literal(a, b, u), rtol=1e-5, atol=1e-5)
    for p, q in zip(g3, g1):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_autocast_keeps_the_dtype_of_the_literal_form(monkeypatch):
    monkeypatch.setattr(clsl_module, "LITERAL_MAX_ELEMENTS", 0)
    torch.manual_seed(0)
    att = LowRankBilinearAttention(12, 10, 16, chunk_elements=9 * 16 * 2)
    x, v = torch.randn(2, 9, 12), torch.randn(2, 21, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = att(x, v)
        want = att.unchunked(x, v)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), att(x, v).detach(), rtol=0.05, atol=0.05)
    got.float().sum().backward()
    for p in att.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_the_literal_form():
    for budget in (None, 5 * 32 * 3):
        a, b, u = inputs(2, 5, 17, 32, dtype=torch.float32, device="cuda")
        e = bilinear_tanh_scores(a, b, u, budget)
        g = torch.randn_like(e)
        got = torch.autograd.grad((e * g).sum(), (a, b, u))
        want = torch.autograd.grad((literal(a, b, u) * g).sum(), (a, b, u))
        torch.testing.assert_close(e, literal(a, b, u), rtol=1e-5, atol=1e-5)
        for p, q in zip(got, want):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.float16):
            assert bilinear_tanh_scores(a.half(), b.half(), u.half(), budget).dtype == torch.float16


def _model(seed=0):
    rng = np.random.default_rng(seed)
    c = 40
    ctx = MethodContext(num_classes=c, feature_channels=24, class_names=[f"c{i}" for i in range(c)],
                        embeddings=rng.normal(size=(c, 9)).astype(np.float32))
    torch.manual_seed(seed)
    return create_method("clsl", ctx, dim=16, heads=2, ffn_dim=16, attention_dim=32,
                         hidden_dim=24, encoder_dropout=0.0, head_dropout=0.0)


@pytest.mark.parametrize("train", [True, False])
def test_the_method_does_not_depend_on_the_form(monkeypatch, train):
    """SGFE streamed or whole, SRFL factored or on the concatenation: the same logits, the same
    gradients, the same BatchNorm statistics (training mode: batch statistics)."""
    features = torch.randn(3, 24, 4, 5, generator=torch.Generator().manual_seed(1))
    results = []
    for limit in (1 << 40, 0):
        monkeypatch.setattr(clsl_module, "LITERAL_MAX_ELEMENTS", limit)
        m = _model().train(train)
        m.attention.chunk_elements = 20 * 32 * 3
        out = m(features)
        loss = out["logits"].square().sum() + out["logits_global"].sin().sum()
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
        bn = m.srfl[1]
        results.append((out, grads, bn.running_mean.clone(), bn.running_var.clone()))
    (o1, g1, m1, v1), (o2, g2, m2, v2) = results
    for key in ("logits", "logits_global"):
        torch.testing.assert_close(o1[key], o2[key], rtol=1e-5, atol=1e-5)
    for p, q in zip(g1, g2):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m1, m2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)


class _Logits(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, image):
        return self.method(image)["logits"]


def test_tracing_and_export_take_the_literal_layouts():
    """The ONNX exporter traces, torch.export compiles with a dynamic batch: both see plain tensor
    operations (no loop, no threads, no branch on sizes) and give the streamed path's numbers."""
    net = _Logits(_model().eval())
    x = torch.randn(3, 24, 4, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = net(x)                                  # 3·20·40·32 elements: streamed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (torch.zeros(2, 24, 4, 5),))
        torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-5)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(net, (torch.zeros(2, 24, 4, 5),), dynamic_shapes={"image": {0: batch}})
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), want, rtol=1e-5, atol=1e-5)


def test_docstring_examples():
    for module in (clsl_module, bilinear_module):
        res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert res.attempted and res.failed == 0, module.__name__
