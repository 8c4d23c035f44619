"""Float64 NumPy references (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]
GradFn = Callable[[Params, int], Params]
KERNEL, BIAS = "hidden/kernel", "bias"
KELLER = (3.4445, -4.7750, 2.0315)


def _run(step: Callable[[Params, Params, dict, int], Params], p0: Params, grad: GradFn, steps: int):
    """Drives ``step(params, grads, state, t)`` (t from 1); returns the params after each step."""
    p = {k: v.copy() for k, v in p0.items()}
    state: dict[str, Any] = {}
    out = []
    for t in range(1, steps + 1):
        g = grad(p, t - 1)
        p = step(p, g, state, t)
        out.append({k: v.copy() for k, v in p.items()})
    return out


def _moments(st: dict, key: str, g: np.ndarray, b1: float, b2: float):
    """Adam's two EMAs of ``g`` under ``key`` in ``st`` (updated in place)."""
    m = b1 * st.get(("m", key), 0.0) + (1 - b1) * g
    v = b2 * st.get(("v", key), 0.0) + (1 - b2) * g * g
    st[("m", key)], st[("v", key)] = m, v
    return m, v


def _adamw_leaf(st: dict, key: str, w, g, t, lr, b1, b2, eps, wd):
    """optax.adamw: m̂/(√v̂ + ε) + λw, decay with the pre-step weights."""
    m = st.get(("m", key), np.zeros_like(w))
    v = st.get(("v", key), np.zeros_like(w))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    st[("m", key)], st[("v", key)] = m, v
    mh, vh = m / (1 - b1**t), v / (1 - b2**t)
    return w - lr * (mh / (np.sqrt(vh) + eps) + wd * w)


def adamw(p0, grad, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101) with optax's ε placement."""

    def step(p, g, st, t):
        return {k: _adamw_leaf(st, k, p[k], g[k], t, lr, b1, b2, eps, weight_decay) for k in p}

    return _run(step, p0, grad, steps)


def adabelief(p0, grad, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-16, weight_decay=0.0):
    """adabelief-pytorch 0.2.1 defaults: rectified, ε added in place to s, decoupled decay.

    ρ_t and r_t by the official direct formula (Python doubles); the rectified
    branch divides by the uncorrected √s; ρ_t < 5 takes the SGD branch m/(1−β₁ᵗ).
    """
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def step(p, g, st, t):
        out = {}
        for k in p:
            m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
            s = b2 * st.get(("s", k), 0.0) + (1 - b2) * (g[k] - m) ** 2 + eps
            st[("m", k)], st[("s", k)] = m, s
            bc1, b2t = 1 - b1**t, b2**t
            rho = rho_inf - 2 * t * b2t / (1 - b2t)
            if rho >= 5:
                r = math.sqrt(
                    (1 - b2t)
                    * (rho - 4)
                    * (rho - 2)
                    * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho)
                )
                d = r / bc1 * m / (np.sqrt(s) + eps)
            else:
                d = m / bc1
            out[k] = p[k] - lr * (d + weight_decay * p[k])
        return out

    return _run(step, p0, grad, steps)


def exadam(p0, grad, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """EXAdam (arXiv 2412.20302 §3) with v1's dynamic step ln(√2·√(t+1)); decay first."""

    def step(p, g, st, t):
        out = {}
        for k in p:
            m, v = _moments(st, k, g[k], b1, b2)
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            d1 = 1 + b2**t * v / (v + eps)
            d2 = 1 + b1**t * m * m / (m * m + eps)
            mt, vt, gt = m / bc1 * d1, v / bc2 * d2, g[k] / bc1 * d1
            alpha = math.log(math.sqrt(2) * math.sqrt(t + 1))
            out[k] = p[k] - lr * (alpha * (mt + gt) / (np.sqrt(vt) + eps) + weight_decay * p[k])
        return out

    return _run(step, p0, grad, steps)


def lion(p0, grad, steps, lr=1e-4, b1=0.9, b2=0.99, weight_decay=0.0):
    """Lion (arXiv 2302.06675 Alg. 2): sign(β₁m + (1−β₁)g), decay λw, then m updated with β₂."""

    def step(p, g, st, t):
        out = {}
        for k in p:
            m = st.get(("m", k), np.zeros_like(p[k]))
            c = b1 * m + (1 - b1) * g[k]
            out[k] = p[k] - lr * (np.sign(c) + weight_decay * p[k])
            st[("m", k)] = b2 * m + (1 - b2) * g[k]
        return out

    return _run(step, p0, grad, steps)


def sgd_sai(p0, grad, steps, lr=1e-2, momentum=0.9, eps=1e-8, weight_decay=1e-2):
    """sgd-sai 1.0.3: g-SNR ‖g₁‖/(unbiased std + ε) per block frozen at step 1; buffer = g₁ first.

    One block per matrix (the kernel) and per leaf (the bias).
    """

    def step(p, g, st, t):
        out = {}
        for k in p:
            if t == 1:
                st[("s", k)] = np.linalg.norm(g[k]) / (np.std(g[k], ddof=1) + eps)
                m = g[k].copy()
            else:
                m = momentum * st[("m", k)] + (1 - momentum) * g[k]
            st[("m", k)] = m
            out[k] = p[k] - lr * (st[("s", k)] * m + weight_decay * p[k])
        return out

    return _run(step, p0, grad, steps)


def _ns5(x: np.ndarray, steps: int = 5) -> np.ndarray:
    """Keller Jordan's quintic Newton–Schulz (wide orientation, ‖X‖_F + 1e-7)."""
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        a = x @ x.T
        x = KELLER[0] * x + (KELLER[1] * a + KELLER[2] * a @ a) @ x
    return x.T if tall else x


def _muon_family(kind: str):
    def ref(
        p0,
        grad,
        steps,
        lr=0.02,
        b1=0.95,
        b2=0.95,
        weight_decay=0.0,
        adam_lr_ratio=0.2,
        adam_b1=0.9,
        adam_b2=0.95,
        adam_eps=1e-10,
        adam_weight_decay=None,
    ):
        """Muon (KellerJordan/Muon@857d1adc) / NorMuon (zichongli5/NorMuon@d45c9a42) on the
        kernel: EMA + Keller-Nesterov, NS5; Muon × √max(1, out/in); NorMuon's per-output
        second moment (β₂, ε = 1e-10 outside √) and Frobenius restore. Bias: AdamW fallback."""

        def step(p, g, st, t):
            w, gk = p[KERNEL], g[KERNEL]
            m = b1 * st.get("m", 0.0) + (1 - b1) * gk
            st["m"] = m
            o = _ns5((1 - b1) * gk + b1 * m)
            fi, fo = w.shape
            if kind == "muon":
                d = o * math.sqrt(max(1.0, fo / fi))
            else:
                v = b2 * st.get("v", 0.0) + (1 - b2) * np.mean(o * o, axis=0, keepdims=True)
                st["v"] = v
                oh = o / (np.sqrt(v) + 1e-10)
                d = oh * np.linalg.norm(o) / (np.linalg.norm(oh) + 1e-10)
                d = d * math.sqrt(max(1.0, fo / fi))
            out = {KERNEL: w - lr * (d + weight_decay * w)}
            adam_wd = weight_decay if adam_weight_decay is None else adam_weight_decay
            out[BIAS] = _adamw_leaf(
                st,
                BIAS,
                p[BIAS],
                g[BIAS],
                t,
                lr * adam_lr_ratio,
                adam_b1,
                adam_b2,
                adam_eps,
                adam_wd,
            )
            return out

        return _run(step, p0, grad, steps)

    return ref


def _project_radial(w, grad, d, delta=0.1, wd_ratio=0.1, eps=1e-8):
    """clovaai/AdamP ``_projection`` (@7f6f038): channel view (a channel is an output
    column here, over fan-in), then the layer view; < 2-D tensors are never projected."""
    if w.ndim < 2:
        return d, 1.0
    for axis in (0, None):  # channel: reduce over fan-in (rows); layer: everything

        def norm(x, axis=axis):
            return np.sqrt(np.sum(x * x, axis=axis, keepdims=axis is not None))

        cos = np.abs(np.sum(grad * w, axis=axis)) / (norm(grad) * norm(w)).squeeze()
        n = w.shape[0] if axis == 0 else w.size
        if np.max(cos) < delta / math.sqrt(n):
            wn = w / (norm(w) + eps)
            return d - wn * np.sum(wn * d, axis=axis, keepdims=axis is not None), wd_ratio
    return d, 1.0


def adamp(p0, grad, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """AdamP (adamp 0.3.0): Adam direction m̂/(√v̂+ε) projected on scale-invariant weights;
    decay w(1 − ηλρ) with the pre-step weights."""

    def step(p, g, st, t):
        out = {}
        for k in p:
            m, v = _moments(st, k, g[k], b1, b2)
            d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            d, ratio = _project_radial(p[k], g[k], d, eps=eps)
            out[k] = p[k] * (1 - lr * weight_decay * ratio) - lr * d
        return out

    return _run(step, p0, grad, steps)


def sgdp(p0, grad, steps, lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True, eps=1e-8):
    """SGDP (adamp 0.3.0): buf = μ buf + g; d = g + μ buf (Nesterov); projected; decay
    w(1 − ηλρ/(1 − μ))."""

    def step(p, g, st, t):
        out = {}
        for k in p:
            buf = momentum * st.get(("b", k), 0.0) + g[k]
            st[("b", k)] = buf
            d = g[k] + momentum * buf if nesterov else buf
            d, ratio = _project_radial(p[k], g[k], d, eps=eps)
            out[k] = p[k] * (1 - lr * weight_decay * ratio / (1 - momentum)) - lr * d
        return out

    return _run(step, p0, grad, steps)


def _hf_adam(st, key, x, t, b1, b2, eps):
    """The HF AdamW direction of GaLore/Conda: m/(√v + ε) · √(1−β₂ᵗ)/(1−β₁ᵗ)."""
    m, v = _moments(st, key, x, b1, b2)
    return m / (np.sqrt(v) + eps) * math.sqrt(1 - b2**t) / (1 - b1**t)


def galore(
    p0, grad, steps, lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, rank=64, scale=0.25
):
    """GaLoreAdamW (galore-torch 1.0): 'std' side (the smaller dimension is projected: the
    fan-out of a (5, 3) kernel), projector = top-r right singular vectors of the first
    gradient (no refresh within 200 steps), Adam in the subspace, ×scale, decay after the
    step; the bias takes the same AdamW without projection."""

    def step(p, g, st, t):
        w, gk = p[KERNEL], g[KERNEL]
        if t == 1:
            st["P"] = np.linalg.svd(gk, full_matrices=False)[2].T[:, :rank]
        P = st["P"]
        d = scale * _hf_adam(st, KERNEL, gk @ P, t, b1, b2, eps) @ P.T
        out = {KERNEL: (w - lr * d) * (1 - lr * weight_decay)}
        db = _hf_adam(st, BIAS, g[BIAS], t, b1, b2, eps)
        out[BIAS] = (p[BIAS] - lr * db) * (1 - lr * weight_decay)
        return out

    return _run(step, p0, grad, steps)


def conda(p0, grad, steps, lr=3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, gap=50):
    """Conda (jie040109/Conda @449af713): m updated first, then (every T steps from 0) the
    full orthogonal SVD factor of m on the smaller side (the fan-out V here); g and m
    rotated, v in the rotated basis (not re-rotated), HF step size, decay after the step.
    The bias takes plain HF Adam."""

    def step(p, g, st, t):
        w, gk = p[KERNEL], g[KERNEL]
        m = b1 * st.get("m", 0.0) + (1 - b1) * gk
        st["m"] = m
        if (t - 1) % gap == 0:
            st["V"] = np.linalg.svd(m, full_matrices=False)[2].T
        V = st["V"]
        rg, rm = gk @ V, m @ V
        v = b2 * st.get("v", 0.0) + (1 - b2) * rg * rg
        st["v"] = v
        d = (rm / (np.sqrt(v) + eps)) @ V.T * math.sqrt(1 - b2**t) / (1 - b1**t)
        out = {KERNEL: (w - lr * d) * (1 - lr * weight_decay)}
        db = _hf_adam(st, BIAS, g[BIAS], t, b1, b2, eps)
        out[BIAS] = (p[BIAS] - lr * db) * (1 - lr * weight_decay)
        return out

    return _run(step, p0, grad, steps)


def _auon(ns_steps: int):
    def ref(p0, grad, steps, lr=0.055, b1=0.95, weight_decay=0.0, eps=1e-8, adam_lr_ratio=0.2):
        """AuON / Hybrid-AuON, paper form (arXiv 2509.24320; ryyzn9/AuON @bba2e822): Keller
        EMA-Nesterov momentum U; AuON: X = U/(‖U‖_F + 1e-7); Hybrid: X = NS_k(U) (k = 1);
        then X / (√mean(cosh(X)²) + ε) × √max(1, out/in). Bias: AdamW(0.1·lr, 0.8, 0.95,
        1e-10), no decay."""

        def step(p, g, st, t):
            w, gk = p[KERNEL], g[KERNEL]
            m = b1 * st.get("m", 0.0) + (1 - b1) * gk
            st["m"] = m
            u = (1 - b1) * gk + b1 * m
            x = _ns5(u, ns_steps) if ns_steps else u / (np.linalg.norm(u) + 1e-7)
            d = x / (np.sqrt(np.mean(np.cosh(x) ** 2)) + eps)
            fi, fo = w.shape
            d = d * math.sqrt(max(1.0, fo / fi))
            out = {KERNEL: w - lr * (d + weight_decay * w)}
            out[BIAS] = _adamw_leaf(
                st, BIAS, p[BIAS], g[BIAS], t, lr * adam_lr_ratio, 0.9, 0.95, 1e-10, weight_decay
            )
            return out

        return _run(step, p0, grad, steps)

    return ref


def sgd_momentum(p0, grad, steps, lr=1e-2, momentum=0.9, weight_decay=0.0):
    """torch.optim.SGD (bitsandbytes SGD8bit's update): buf = μ buf + (g + λw); w −= η buf."""

    def step(p, g, st, t):
        out = {}
        for k in p:
            buf = momentum * st.get(("b", k), 0.0) + g[k] + weight_decay * p[k]
            st[("b", k)] = buf
            out[k] = p[k] - lr * buf
        return out

    return _run(step, p0, grad, steps)


REFERENCES: dict[str, Callable[..., list[Params]]] = {
    "auon": _auon(0),
    "hybrid_auon": _auon(1),
    # Registry defaults keep leaves below 4096 entries in full precision (bitsandbytes'
    # min_8bit_size): on the tiny test tree the 8-bit optimizers are their 32-bit twins.
    "adamw_8bit": adamw,
    "lion_8bit": lion,
    "sgd_momentum_8bit": sgd_momentum,
    "adamp": adamp,
    "sgdp": sgdp,
    "galore": galore,
    "conda": conda,
    "adamw": adamw,
    "adabelief": adabelief,
    "exadam": exadam,
    "lion": lion,
    "sgd_sai": sgd_sai,
    "muon": _muon_family("muon"),
    "normuon": _muon_family("normuon"),
}
