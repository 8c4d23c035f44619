"""Float64 NumPy references of the matrix, projection and curvature optimizers.

They take the tree of ``tests/conformance/test_float64.py``'s ``FULL`` problem —
any '/'-joined paths — and route leaves as optx's default router does: a leaf under
``embed*`` and any leaf of rank < 2 go to the fallback; ``conv/kernel``
``(*window, in, out)`` is one ``(window·in, out)`` matrix; a rank-3 ``blocks/…``
kernel is a stack of ``(in, out)`` matrices; any other 2-D leaf is one matrix.
Randomness (APOLLO's projections, probes, AGVM's half batches) is drawn with
``jax.random`` by the test or by the helpers here (never by optx) and documented
in each reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.projection_reference import stable_slot_order
from tests.references.optimizers import _adamw_leaf, _ns5, _run

Params = dict[str, np.ndarray]


def is_matrix(key: str, w: np.ndarray) -> bool:
    """The default router's matrix group (see the module docstring)."""
    return w.ndim >= 2 and not any(c.startswith("embed") for c in key.split("/"))


def to_mats(key: str, w: np.ndarray) -> np.ndarray:
    """The ``(batch, fan_in, fan_out)`` view of a matrix leaf."""
    if key.startswith("conv"):
        return w.reshape(1, -1, w.shape[-1])
    return w.reshape(-1, *w.shape[-2:])


def lion_kappa(p0, grad, steps, lr=1e-4, b1=0.9, b2=0.99, weight_decay=0.0, aux=None):
    """Lion-𝒦 with 𝒦 = nuclear norm (arXiv 2310.05898 §3; Lion's Alg. 2 otherwise):
    c = β₁m + (1−β₁)g; matrices get Keller's NS5 polar factor of c per matrix of the
    stack; leaves without a layout (bias, embedding) get c/‖c‖₂ over the whole leaf
    (the nuclear norm of a 1 × n matrix); then w −= η(∇𝒦(c) + λw), m ← β₂m + (1−β₂)g."""

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            m = st.get(("m", k), np.zeros_like(w))
            c = b1 * m + (1 - b1) * g[k]
            if is_matrix(k, w):
                d = np.stack([_ns5(x) for x in to_mats(k, c)]).reshape(w.shape)
            else:
                d = c / np.linalg.norm(c)
            out[k] = w - lr * (d + weight_decay * w)
            st[("m", k)] = b2 * m + (1 - b2) * g[k]
        return out

    return _run(step, p0, grad, steps)


def hf_adamw_leaf(st, key, w, g, t, lr, b1, b2, eps, wd):
    """HF/torch-style AdamW with ε on the uncorrected √v and bias correction folded into
    the step, optax's decay order: w − η(m/(√v + ε)·√(1−β₂ᵗ)/(1−β₁ᵗ) + λw)."""
    m = b1 * st.get(("m", key), 0.0) + (1 - b1) * g
    v = b2 * st.get(("v", key), 0.0) + (1 - b2) * g * g
    st[("m", key)], st[("v", key)] = m, v
    d = m / (np.sqrt(v) + eps) * math.sqrt(1 - b2**t) / (1 - b1**t)
    return w - lr * (d + wd * w)


def _torch_quantile(x: np.ndarray, q: float) -> float:
    """``torch.quantile`` (linear interpolation between the order statistics)."""
    s = np.sort(x.ravel())
    pos = q * (s.size - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.size - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def root(p0, grad, steps, lr=1e-3, b1=0.95, weight_decay=0.1, quantile=0.9, clip_eps=1e-9):
    """ROOT (noah-research ROOT/examples/example_train.py @aea3c60d, class ``ROOT``): per
    matrix M ← μM + G, U = G + μM (Nesterov); ε = torch.quantile(|U|, 0.9) + 1e-9 over
    each matrix of the stack; B = clip(U, ±ε); O = NS5(B) with Muon's coefficients (the
    official ``root5`` table has only 2048-sized shapes); w −= η(0.2√max(m, n)·O + λw).
    Fallback (bias, embedding): the official built-in AdamW, same lr and decay, β = (0.9,
    0.95), ε = 1e-8 on the uncorrected √v."""

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            if not is_matrix(k, w):
                out[k] = hf_adamw_leaf(st, k, w, g[k], t, lr, 0.9, 0.95, 1e-8, weight_decay)
                continue
            m = b1 * st.get(("m", k), 0.0) + g[k]
            st[("m", k)] = m
            mats = []
            for u in to_mats(k, g[k] + b1 * m):
                e = _torch_quantile(np.abs(u), quantile) + clip_eps
                mats.append(_ns5(np.clip(u, -e, e)) * 0.2 * math.sqrt(max(u.shape)))
            out[k] = w - lr * (np.stack(mats).reshape(w.shape) + weight_decay * w)
        return out

    return _run(step, p0, grad, steps)


def top_right_singular(x: np.ndarray, rank: int) -> np.ndarray:
    """GaLore's 'std' projector of an ``(m, n)`` matrix with m ≥ n: the top-``rank``
    right singular vectors (columns), ``V[:, :r]``."""
    return np.linalg.svd(x, full_matrices=False)[2].T[:, :rank]


def adam_corrected(st, key, x, t, b1, b2, eps):
    """bitsandbytes/optax Adam direction m̂/(√v̂ + ε)."""
    m = b1 * st.get(("m", key), 0.0) + (1 - b1) * x
    v = b2 * st.get(("v", key), 0.0) + (1 - b2) * x * x
    st[("m", key)], st[("v", key)] = m, v
    return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def galore_8bit(
    p0, grad, steps, lr=1e-2, weight_decay=0.0, rank=2, gap=3, scale=0.25, b1=0.9, b2=0.999,
    eps=1e-8, aux=None,
):  # fmt: skip
    """GaLoreAdamW8bit (galore-torch @2cc66f8): per matrix of the stack (all here have
    fan-in > fan-out, so the fan-out is projected), P = top-r right singular vectors of
    the gradient at steps 1, 1+T, ...; Adam moments carried across refreshes; the
    bitsandbytes Adam direction m̂/(√v̂ + ε) of R = GP (tensors < 4096 entries keep 32-bit
    state: no quantization at these sizes), back-projected ×α, decay after the step
    (w − ηU)(1 − ηλ). Fallback (bias, embedding): bitsandbytes AdamW, decay first."""

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            if not is_matrix(k, w):
                d = adam_corrected(st, k, g[k], t, b1, b2, eps)
                out[k] = w - lr * (d + weight_decay * w)
                continue
            mats = []
            for i, x in enumerate(to_mats(k, g[k])):
                if (t - 1) % gap == 0:
                    st[("P", k, i)] = top_right_singular(x, rank)
                P = st[("P", k, i)]
                mats.append(scale * adam_corrected(st, (k, i), x @ P, t, b1, b2, eps) @ P.T)
            out[k] = (w - lr * np.stack(mats).reshape(w.shape)) * (1 - lr * weight_decay)
        return out

    return _run(step, p0, grad, steps)


def _apollo(tensor: bool):
    def ref(
        p0, grad, steps, lr=1e-2, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-6, scale=1.0,
        gap=3, gamma=1.01, draws=None, aux=None,
    ):  # fmt: skip
        """APOLLO / APOLLO-Mini (apollo-torch 1.0.3 ``APOLLOAdamW`` = repo @76b3472): per
        matrix (fan-in > fan-out here, so the fan-out is projected) R = GP with the draw
        of the current period (``draws[path][n]``, ``(batch, fan_out, r)``, redrawn at
        steps 1, 1+T, ...; moments kept); M, V EMAs of R; Ñ = M/(√V + ε) (no bias
        correction); s = ‖Ñ‖/(‖R‖ + 1e-8) over the rank axis per fan-in channel (APOLLO)
        or over the whole matrix (Mini); G̃ = G ⊙ s; the norm-growth limiter (γ, first
        step only records ‖G̃‖, the limited norm is stored); ×√α; step size
        η√(1−β₂ᵗ)/(1−β₁ᵗ); decay after the step (w − ηU)(1 − ηλ). Fallback: the official
        AdamW (ε on the uncorrected √v, same decay after the step).

        The official draws come from a seeded torch ``Generator``; the test draws the
        N(0, 1/r) matrices with ``jax.random`` from the per-leaf key chain optx documents
        (k₀ = fold_in(key(seed), crc32(path)), kₙ₊₁ = split(kₙ)[0], normal(kₙ₊₁)/√r) and
        hands them over here."""

        def step(p, g, st, t):
            out = {}
            for k, w in p.items():
                if not is_matrix(k, w):
                    m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
                    v = b2 * st.get(("v", k), 0.0) + (1 - b2) * g[k] ** 2
                    st[("m", k)], st[("v", k)] = m, v
                    d = m / (np.sqrt(v) + eps) * math.sqrt(1 - b2**t) / (1 - b1**t)
                    out[k] = (w - lr * d) * (1 - lr * weight_decay)
                    continue
                mats = []
                for i, x in enumerate(to_mats(k, g[k])):
                    P = draws[k][(t - 1) // gap][i]
                    r = x @ P
                    mk = ("m", k, i)
                    m = b1 * st.get(mk, 0.0) + (1 - b1) * r
                    v = b2 * st.get(("v", k, i), 0.0) + (1 - b2) * r * r
                    st[mk], st[("v", k, i)] = m, v
                    n = m / (np.sqrt(v) + eps)
                    if tensor:
                        s = np.linalg.norm(n) / (np.linalg.norm(r) + 1e-8)
                    else:
                        s = np.linalg.norm(n, axis=1, keepdims=True)
                        s = s / (np.linalg.norm(r, axis=1, keepdims=True) + 1e-8)
                    u = x * s
                    norm = np.linalg.norm(u)
                    if t > 1:
                        limiter = max(norm / (st[("N", k, i)] + 1e-8), gamma) / gamma
                        u, norm = u / limiter, norm / limiter
                    st[("N", k, i)] = norm
                    mats.append(u * math.sqrt(scale) * math.sqrt(1 - b2**t) / (1 - b1**t))
                out[k] = (w - lr * np.stack(mats).reshape(w.shape)) * (1 - lr * weight_decay)
            return out

        return _run(step, p0, grad, steps)

    return ref


def dct_basis(d: int) -> np.ndarray:
    """The official ``dct3_matrix``: Q[i, j] = √(2/d)·c_i·cos(πi(2j+1)/(2d)), c₀ = 1/√2;
    its columns are the basis vectors."""
    i, j = np.arange(d)[:, None], np.arange(d)[None, :]
    c = np.where(i == 0, math.sqrt(0.5), 1.0)
    return math.sqrt(2.0 / d) * c * np.cos(np.pi * i * (2 * j + 1) / (2 * d))


def dct_adamw(
    p0, grad, steps, lr=1e-3, weight_decay=0.0, rank=2, gap=3, b1=0.9, b2=0.999, eps=1e-8,
    aux=None,
):  # fmt: skip
    """DCTAdamW (ista-daslab-optimizers 1.1.15, proj='dct', sim_type='matmul'): per matrix
    (fan-in > fan-out: the fan-out side gets the basis), at the 1-based steps 1, T, 2T, …
    S = GQ, the r columns of largest ‖S_{:,j}‖₁, R = G Q_I, in optx's default
    ``slot_order='stable'`` (a column still selected keeps its slot; new columns, best
    score first, fill the freed slots in ascending order; the initial indices are all 0,
    of which only the first slot counts); Adam
    m̂/(√v̂ + ε) on R with moments neither reset nor rotated at a refresh; U = (Adam) Q_Iᵀ;
    w − η(U + λw). Fallback: optax-style AdamW."""

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            if not is_matrix(k, w):
                out[k] = w - lr * (adam_corrected(st, k, g[k], t, b1, b2, eps) + weight_decay * w)
                continue
            mats = []
            for i, x in enumerate(to_mats(k, g[k])):
                Q = dct_basis(x.shape[1])
                if t == 1 or t % gap == 0:
                    score = np.sum(np.abs(x @ Q), axis=0)
                    chosen = np.argsort(-score, kind="stable")[:rank]
                    prev = st.get(("I", k, i), np.zeros(rank, dtype=chosen.dtype))
                    st[("I", k, i)] = stable_slot_order(prev[None], chosen[None])[0]
                Qi = Q[:, st[("I", k, i)]]
                mats.append(adam_corrected(st, (k, i), x @ Qi, t, b1, b2, eps) @ Qi.T)
            out[k] = w - lr * (np.stack(mats).reshape(w.shape) + weight_decay * w)
        return out

    return _run(step, p0, grad, steps)


def soft_cap_alpha(w_max: float, delta: float, decay: float) -> float:
    """The soft cap's α (modula ``soft_cap_coupling``): σ ↦ p₂(p₁(σ)), p₁ = σ − ασ³,
    p₂ = y + αy³, maps k = w_max(1 − decay) + δ to w_max; with β = αk² that is
    β⁴ − 3β³ + 3β² = 1 − w_max/k, the root in [0, 1] (0 when k ≤ w_max)."""
    k = w_max * (1 - decay) + delta
    if k <= w_max:
        return 0.0
    c = (delta - w_max * decay) / k
    roots = np.roots([1.0, -3.0, 3.0, 0.0, -c])
    beta = min(z.real for z in roots if abs(z.imag) < 1e-9 and 0 <= z.real <= 1)
    # One Newton polish of the quartic in float64.
    beta -= (beta**4 - 3 * beta**3 + 3 * beta**2 - c) / (4 * beta**3 - 9 * beta**2 + 6 * beta)
    return beta / k**2


# microsoft/dion's 5-step table (optax's 'dion'): X/(‖X‖_F + 1e-7), one row per step.
DION_5 = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


def _ns_table(x: np.ndarray, table, eps: float = 1e-7) -> np.ndarray:
    """Newton–Schulz with one (a, b, c) per step (wide orientation, X/(‖X‖_F + eps))."""
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + eps)
    for a, b, c in table:
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    return x.T if tall else x


def lipschitz_muon(
    p0, grad, steps, lr=0.02, weight_decay=0.0, b1=0.95, w_max=1.0, adam_lr_ratio=0.2,
    aux=None,
):  # fmt: skip
    """Lipschitz Muon (arXiv 2507.13338; Arongil/lipschitz-transformers, modula
    ``Atom.decay_step_project`` with the spectral soft cap), optx's default
    ``preset='nanogpt'`` (``nanogpt/train_spectral_cap.py``; ``projection='soft_cap'``,
    ``geometry='rms'``, ``coupling='rms'``): per matrix, EMA-Nesterov momentum, D =
    NS(U)·s with Dion's 5-step table and s = √(fan_out/fan_in), W' = W − η(D + λW); then
    M = W'/s, M ← p₂(p₁(M)) with α = soft_cap_alpha(w_max, δ = η·1.14502·1.05, ηλ)
    (δ in RMS→RMS units), W = sM. Fallback (bias, embedding): Muon's drop-in AdamW (0.2η,
    β = (0.9, 0.95), ε = 1e-10 on the corrected √v̂, decay λ), no projection."""
    alpha = soft_cap_alpha(w_max, lr * 1.14502 * 1.05, lr * weight_decay)

    def cap(m):
        for a in (-alpha, alpha):  # σ ← σ + aσ³ on the Gram matrix of the smaller side
            m = m + a * (m @ (m.T @ m) if m.shape[0] >= m.shape[1] else (m @ m.T) @ m)
        return m

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            if not is_matrix(k, w):
                out[k] = _adamw_leaf(
                    st, k, w, g[k], t, lr * adam_lr_ratio, 0.9, 0.95, 1e-10, weight_decay
                )
                continue
            m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
            st[("m", k)] = m
            u = (1 - b1) * g[k] + b1 * m
            new = []
            for x, wm in zip(to_mats(k, u), to_mats(k, w), strict=True):
                s = math.sqrt(wm.shape[1] / wm.shape[0])
                w1 = wm - lr * (_ns_table(x, DION_5) * s + weight_decay * wm)
                new.append(s * cap(w1 / s))
            out[k] = np.stack(new).reshape(w.shape)
        return out

    return _run(step, p0, grad, steps)


def frugal(
    p0, grad, steps, lr=1e-3, weight_decay=0.0, density=0.25, gap=3, b1=0.9, b2=0.999,
    eps=1e-8, aux=None,
):  # fmt: skip
    """FRUGAL, block projection (arXiv 2411.07837 Alg. 1; ``BlockOptimizer`` of the fork
    hungquangbui02022003/FRUGAL, order 'descending' as the official pre-training
    scripts), optx's per-shape-group selection: the matrices (each matrix of a stack is
    a block) are grouped by (fan_in, fan_out) in tree order; max(1, round(ρN)) blocks of
    a group of N are active; every T steps (from step 1) the next ones in descending
    cyclic order are chosen (cursor starts at N − 1) and Adam's state — its count too —
    restarts; active blocks get Adam m̂/(√v̂ + ε), the others sign(G); then w − η(U + λw).
    Fallback (bias, embedding): optax-style AdamW, never reset."""
    groups: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for k in sorted(p0):
        if is_matrix(k, p0[k]):
            for i, x in enumerate(to_mats(k, p0[k])):
                groups.setdefault(x.shape, []).append((k, i))

    def step(p, g, st, t):
        out = {}
        mats = {k: to_mats(k, g[k]).copy() for k in p if is_matrix(k, p[k])}
        dirs = {k: np.sign(x) for k, x in mats.items()}
        for shape, blocks in groups.items():
            n = len(blocks)
            n_active = max(1, round(density * n))
            if (t - 1) % gap == 0:
                cur = st.get(("cursor", shape), n - 1)
                st[("active", shape)] = [(cur - j) % n for j in range(n_active)]
                st[("cursor", shape)] = (cur - n_active) % n
                st[("m", shape)] = st[("v", shape)] = 0.0
                st[("count", shape)] = 0
            chosen = st[("active", shape)]
            x = np.stack([mats[blocks[j][0]][blocks[j][1]] for j in chosen])
            st[("count", shape)] += 1
            c = st[("count", shape)]
            m = b1 * st[("m", shape)] + (1 - b1) * x
            v = b2 * st[("v", shape)] + (1 - b2) * x * x
            st[("m", shape)], st[("v", shape)] = m, v
            d = (m / (1 - b1**c)) / (np.sqrt(v / (1 - b2**c)) + eps)
            for row, j in enumerate(chosen):
                k, i = blocks[j]
                dirs[k][i] = d[row]
        for k, w in p.items():
            if k in dirs:
                out[k] = w - lr * (dirs[k].reshape(w.shape) + weight_decay * w)
            else:
                out[k] = w - lr * (adam_corrected(st, k, g[k], t, b1, b2, eps) + weight_decay * w)
        return out

    return _run(step, p0, grad, steps)


def agvm_sgd(
    p0, grad, steps, lr=0.1, weight_decay=1e-4, momentum=0.9, decay=0.97, interval=3,
    aux=None,
):  # fmt: skip
    """AGVM around torch SGD (Sense-X/AGVM ``AgvmOptimizerHook``; arXiv 2210.11078 §3):
    b = μb + g + λw, w −= η·s_i·b with one group per top-level key (sorted: the tree
    order; group 0 the reference). With start 0, at the 0-based steps t ≡ 0 (mod
    interval): D_i = 1 − cos(g^A_i, g^B_i) over the group (norms clamped at 1e-8),
    s_i ← α s_i + (1 − α)√clip((D₀ + 1e-6)/(D_i + 1e-6), 0.5, 10), applied from that
    step. The half-batch gradients are g ± ½|g|ξ with ξ drawn by the test
    (``aux[t]['xi']``, standard normal per leaf from ``jax.random``)."""
    names = list(dict.fromkeys(k.split("/")[0] for k in sorted(p0)))
    label = {k: names.index(k.split("/")[0]) for k in p0}

    def step(p, g, st, t):
        xi = aux[t - 1]["xi"]
        if (t - 1) % interval == 0:
            ab, aa, bb = (np.zeros(len(names)) for _ in range(3))
            for k in p:
                a = g[k] + 0.5 * np.abs(g[k]) * xi[k]
                b = g[k] - 0.5 * np.abs(g[k]) * xi[k]
                ab[label[k]] += np.sum(a * b)
                aa[label[k]] += np.sum(a * a)
                bb[label[k]] += np.sum(b * b)
            cos = ab / (np.maximum(np.sqrt(aa), 1e-8) * np.maximum(np.sqrt(bb), 1e-8))
            d = 1.0 - cos
            ratio = np.clip((d[0] + 1e-6) / (d + 1e-6), 0.5, 10.0)
            st["s"] = decay * st.get("s", np.ones(len(names))) + (1 - decay) * np.sqrt(ratio)
        out = {}
        for k, w in p.items():
            b = momentum * st.get(("b", k), 0.0) + g[k] + weight_decay * w
            st[("b", k)] = b
            out[k] = w - lr * st["s"][label[k]] * b
        return out

    return _run(step, p0, grad, steps)


def _sophia(kind: str):
    def ref(
        p0, grad, steps, lr=3e-4, weight_decay=0.1, b1=0.965, b2=0.99, gamma=0.05,
        tokens=1024.0, eps=1e-15, interval=3, hess=None, aux=None,
    ):  # fmt: skip
        """Sophia (arXiv 2305.14342 Alg. 3): h ← β₂h + (1 − β₂)ĥ at the 0-based steps
        ≡ 0 (mod k) — from step k for Sophia-G (Liuhong99/Sophia ``train_sophiag.py``
        @a7e15722 estimates after step k − 1), from step 0 for Sophia-H (the paper) —
        with the parameters of that step, before m; m ← β₁m + (1 − β₁)g (no bias
        correction); w − η(clip(m / max(γBh, ε), ±1) + λw).

        Sophia-G: ĥ = ĝ⊙ĝ with ĝ the gradient of the sampled loss (here
        the loss itself: the problem has no predictive distribution) clipped like
        ``torch.nn.utils.clip_grad_norm_(1.0)`` (ĝ·min(1, 1/(‖ĝ‖ + 1e-6)), global),
        B = ``tokens``; decay only on Linear weights (the matrices), the nanoGPT mask.
        Sophia-H: ĥ = z⊙(Hz) = z²·diag(H) on the quadratic problem, z the Gaussian
        probe the test draws (``aux[t]['z']``: one float32 standard-normal draw over
        all leaves in tree order from the step's key, cast to float64), B = 1.
        ``hess`` is the problem's exact Hessian diagonal."""
        hess = hess or {}

        def step(p, g, st, t):
            due = (t - 1) % interval == 0 and (kind == "h" or t > 1)
            if due:
                if kind == "g":
                    norm = math.sqrt(sum(np.sum(x * x) for x in g.values()))
                    c = min(1.0, 1.0 / (norm + 1e-6))
                    est = {k: (c * x) ** 2 for k, x in g.items()}
                else:
                    est = {k: aux[t - 1]["z"][k] ** 2 * hess[k] for k in p}
                for k in p:
                    st[("h", k)] = b2 * st.get(("h", k), 0.0) + (1 - b2) * est[k]
            out = {}
            for k, w in p.items():
                m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
                st[("m", k)] = m
                curv = gamma * tokens * st.get(("h", k), np.zeros_like(w))
                u = np.clip(m / np.maximum(curv, eps), -1.0, 1.0)
                decay = weight_decay if (kind == "h" or is_matrix(k, w)) else 0.0
                out[k] = w - lr * (u + decay * w)
            return out

        return _run(step, p0, grad, steps)

    return ref


def adahessian(
    p0, grad, steps, lr=0.15, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-4, interval=3,
    hess=None, aux=None,
):  # fmt: skip
    """AdaHessian (amirgholami/adahessian ``optim_adahessian.py`` @85ebc00c; arXiv
    2006.00719 Eq. 8–11): D = |z ⊙ Hz| with Rademacher z is exactly diag(H) = ``hess`` on
    the quadratic problem (z² = 1); conv kernels average D over their window axes;
    v ← β₂v + (1 − β₂)D² at the 0-based steps ≡ 0 (mod k) (optx's ``update_interval``;
    1 officially), bias-corrected by the number of refreshes; m ← β₁m + (1 − β₁)g;
    u = (m/(1 − β₁ᵗ)) / (√v/√(1 − β₂ⁿ) + ε) (power 1); w − η(u + λw)."""

    def step(p, g, st, t):
        if (t - 1) % interval == 0:
            st["n"] = st.get("n", 0) + 1
            for k, w in p.items():
                d = hess[k]
                if k.startswith("conv"):
                    d = np.broadcast_to(
                        np.mean(d, axis=tuple(range(w.ndim - 2)), keepdims=True), w.shape
                    )
                st[("v", k)] = b2 * st.get(("v", k), 0.0) + (1 - b2) * d * d
        n = st["n"]
        out = {}
        for k, w in p.items():
            m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
            st[("m", k)] = m
            denom = np.sqrt(st[("v", k)]) / math.sqrt(1 - b2**n) + eps
            out[k] = w - lr * ((m / (1 - b1**t)) / denom + weight_decay * w)
        return out

    return _run(step, p0, grad, steps)


def mfac(p0, grad, steps, lr=1e-3, weight_decay=0.0, num_grads=4, damp=1e-5, aux=None):
    """M-FAC, dynamic algorithm (IST-DASLab/M-FAC ``optim.py`` @8116367f; arXiv 2107.03356
    Eq. 3): g̃ = g + λw (coupled L2) over all leaves raveled into one vector; g̃ enters a
    ring buffer of m zero-initialised slots (oldest overwritten); u = F⁻¹g̃ with
    F = λ_damp I + (1/m) Σ_slots g_i g_iᵀ, solved here directly as the dense d × d
    system (d = 72); momentum 0 (official): w −= ηu."""
    keys = sorted(p0)

    def step(p, g, st, t):
        flat = np.concatenate([(g[k] + weight_decay * p[k]).ravel() for k in keys])
        buf = st.setdefault("G", np.zeros((num_grads, flat.size)))
        buf[(t - 1) % num_grads] = flat
        F = damp * np.eye(flat.size) + buf.T @ buf / num_grads
        u = np.linalg.solve(F, flat)
        out, off = {}, 0
        for k in keys:
            n = p[k].size
            out[k] = p[k] - lr * u[off : off + n].reshape(p[k].shape)
            off += n
        return out

    return _run(step, p0, grad, steps)


def _sherman_morrison(f: np.ndarray, v: np.ndarray, decay: float) -> np.ndarray:
    """(P⁻¹ + vvᵀ)⁻¹ with P = decay·F⁻¹ + (1 − decay)I (mkor ``sm_inverse``)."""
    p = decay * f + (1 - decay) * np.eye(f.shape[0])
    pv = p @ v
    return p - np.outer(pv, v @ p) / (1.0 + v @ pv)


def _mkor(hybrid: bool):
    def ref(
        p0, grad, steps, lr=0.05, weight_decay=0.0, momentum=0.9, interval=3, decay=0.95,
        threshold=2.0, clip=100.0, window=2, switch_threshold=0.1, hess=None, aux=None,
    ):  # fmt: skip
        """MKOR (mkor/mkor.py @3a0e3bb2, arXiv 2306.01685 Alg. 1) with float64 factors
        (the official ``half_precision=False``): layers are the matrix leaves with the
        PyTorch view M = [∇W, ∇b]ᵀ (a sibling ``bias`` folded in as the last input row,
        ā gets a trailing 1 before the clamp). Statistics: the test's captures (``aux[t]['_captures']``,
        drawn with ``jax.random``) where given, else from the gradient — with a bias
        ḡ = ∇b, ā = ∇W∇b/‖∇b‖² — clamped to ±100. Every k steps (from step 0): a factor
        flagged for reset becomes I (all start flagged), else one Sherman–Morrison step;
        max|F⁻¹| > 2 after it flags the factor (a blow-up of A⁻¹ also resets G⁻¹ in the
        same refresh and flags A⁻¹ again). Every step Δ = A⁻ᵀMG⁻ᵀ (Flax view) ×
        (‖∇W‖ + ‖∇b‖)/(‖Δ_W‖ + ‖Δ_b‖); then torch SGD: buf = μ buf + Δ + λw, w −= η buf
        (non-layer leaves: raw gradients).

        MKOR-H (optx's specification of the paper's §3.5 rule): the loss of each step
        (float32) is averaged over windows of ``window`` steps; once a window's relative
        decrease falls below ``switch_threshold`` × the best one, preconditioning stops
        (that step included) and SGD continues on raw gradients."""
        layers = {}
        for k in p0:
            if is_matrix(k, p0[k]):
                parent = k.rpartition("/")[0]
                bias = f"{parent}/bias" if f"{parent}/bias" in p0 and p0[k].ndim == 2 else None
                layers[k] = bias

        def precondition(p, g, st, t):
            out = dict(g)
            caps = aux[t - 1].get("_captures", {}) if aux else {}
            for k, bk in layers.items():
                mats = to_mats(k, g[k])
                nb = len(mats)
                bias = g[bk].reshape(nb, 1, -1) if bk else None
                if (t - 1) % interval == 0:
                    for i, x in enumerate(mats):
                        if k in caps:
                            a = caps[k][0].reshape(nb, -1)[i]
                            gg = caps[k][1].reshape(nb, -1)[i]
                        else:
                            gg = bias[i, 0]
                            a = x @ gg / max(np.sum(gg * gg), 1e-30)
                        if bk:  # the official AHandler appends the ones, then clamps
                            a = np.concatenate([a, [1.0]])
                        a, gg = np.clip(a, -clip, clip), np.clip(gg, -clip, clip)
                        ra = st.get(("ra", k, i), True)
                        rg = st.get(("rg", k, i), True)
                        A = np.eye(a.size) if ra else _sherman_morrison(st[("A", k, i)], a, decay)
                        blew_a = (not ra) and np.max(np.abs(A)) > threshold
                        rg = rg or blew_a
                        G = np.eye(gg.size) if rg else _sherman_morrison(st[("G", k, i)], gg, decay)
                        blew_g = (not rg) and np.max(np.abs(G)) > threshold
                        st[("A", k, i)], st[("G", k, i)] = A, G
                        st[("ra", k, i)], st[("rg", k, i)] = blew_a or blew_g, blew_g
                new_k, new_b = [], []
                for i, x in enumerate(mats):
                    m = np.concatenate([x, bias[i]]) if bk else x
                    pre = st[("A", k, i)].T @ m @ st[("G", k, i)].T
                    fi = x.shape[0]

                    def norms(y, fi=fi, has_bias=bk is not None):
                        return np.linalg.norm(y[:fi]) + (np.linalg.norm(y[fi]) if has_bias else 0.0)

                    q = pre * (norms(m) / norms(pre)) if norms(pre) > 0 else m
                    new_k.append(q[:fi])
                    if bk:
                        new_b.append(q[fi])
                out[k] = np.stack(new_k).reshape(g[k].shape)
                if bk:
                    out[bk] = np.stack(new_b).reshape(g[bk].shape)
            return out

        def switch(p, g, st, t):
            loss = np.float32(sum(np.sum(g[k] * p[k] - 0.5 * hess[k] * p[k] ** 2) for k in p))
            total = st.get("wl", np.float32(0)) + loss
            n = st.get("wn", 0) + 1
            mean = total / np.float32(n)
            windows, best = st.get("windows", 0), st.get("best", np.float32(0))
            if n >= window:
                if windows > 0:
                    prev = st["prev"]
                    rate = (prev - mean) / max(abs(prev), np.float32(1e-12))
                    if best > 0 and rate < np.float32(switch_threshold) * best:
                        st["first_order"] = True
                    st["best"] = max(best, rate)
                st["prev"], st["windows"], st["wl"], st["wn"] = mean, windows + 1, np.float32(0), 0
            else:
                st["wl"], st["wn"] = total, n

        def step(p, g, st, t):
            if hybrid:
                switch(p, g, st, t)
            d = g if st.get("first_order") else precondition(p, g, st, t)
            out = {}
            for k, w in p.items():
                buf = momentum * st.get(("buf", k), 0.0) + d[k] + weight_decay * w
                st[("buf", k)] = buf
                out[k] = w - lr * buf
            return out

        return _run(step, p0, grad, steps)

    return ref


def _eigh_desc(m: np.ndarray) -> np.ndarray:
    """Eigenvectors by decreasing eigenvalue (official ``get_orthogonal_matrix``)."""
    return np.linalg.eigh(m + 1e-30 * np.eye(m.shape[0]))[1][:, ::-1]


def soap(
    p0, grad, steps, lr=3e-3, weight_decay=0.01, b1=0.95, b2=0.95, eps=1e-8, gap=3,
    aux=None,
):  # fmt: skip
    """SOAP (nikhilvyas/SOAP ``soap.py`` @a1e55353; arXiv 2409.11321 Alg. 3–4) in the
    Flax view: for every matrix (dense, conv as (window·in, out), each layer of a stack
    and — ``rotate_fallback_matrices`` — the embedding) factors L = EMA(GGᵀ),
    R = EMA(GᵀG) (β_s = β₂); the first call only initializes (L, R from the first
    gradient, bases by eigh, decreasing eigenvalues), the parameters do not move. Then
    per step: G' = Q_LᵀGQ_R, Adam moments of G' (M' kept in the original coordinates
    across basis changes: projected back and re-projected), ε on √V, step size
    η√(1−β₂ˢ)/(1−β₁ˢ) with s the number of real updates; decay after the step
    (w − ηU)(1 − ηλ); then L, R updated with G and, when s % T = 0, each basis refreshed
    by one power step: columns sorted by diag(QᵀLQ) (V's axis permuted alike),
    Q ← QR(L Q). 1-D leaves: Adam with the same first-call skip.

    Eigenvector signs are arbitrary (NumPy and XLA may differ); the update is invariant
    to them (V is element-wise, M' lives in the original coordinates), so the
    parameters are compared directly."""

    def mats_of(k, w):
        return to_mats(k, w) if w.ndim >= 2 else None

    def step(p, g, st, t):
        out = {}
        for k, w in p.items():
            ms = mats_of(k, g[k])
            if t == 1:
                if ms is not None:
                    for i, x in enumerate(ms):
                        L, R = (1 - b2) * x @ x.T, (1 - b2) * x.T @ x
                        st[("L", k, i)], st[("R", k, i)] = L, R
                        st[("QL", k, i)], st[("QR", k, i)] = _eigh_desc(L), _eigh_desc(R)
                out[k] = w
                continue
            s = t - 1
            bc = math.sqrt(1 - b2**s) / (1 - b1**s)
            if ms is None:
                m = b1 * st.get(("m", k), 0.0) + (1 - b1) * g[k]
                v = b2 * st.get(("v", k), 0.0) + (1 - b2) * g[k] ** 2
                st[("m", k)], st[("v", k)] = m, v
                out[k] = (w - lr * bc * m / (np.sqrt(v) + eps)) * (1 - lr * weight_decay)
                continue
            upd = []
            for i, x in enumerate(ms):
                ql, qr = st[("QL", k, i)], st[("QR", k, i)]
                m = b1 * st.get(("m", k, i), 0.0) + (1 - b1) * x  # original coordinates
                v = b2 * st.get(("v", k, i), 0.0) + (1 - b2) * (ql.T @ x @ qr) ** 2
                st[("m", k, i)] = m
                upd.append(ql @ ((ql.T @ m @ qr) / (np.sqrt(v) + eps)) @ qr.T)
                L = b2 * st[("L", k, i)] + (1 - b2) * x @ x.T
                R = b2 * st[("R", k, i)] + (1 - b2) * x.T @ x
                st[("L", k, i)], st[("R", k, i)] = L, R
                if s % gap == 0:
                    o1 = np.argsort(-np.diag(ql.T @ L @ ql), kind="stable")
                    o2 = np.argsort(-np.diag(qr.T @ R @ qr), kind="stable")
                    v = v[o1][:, o2]
                    ql = np.linalg.qr(L @ ql[:, o1])[0]
                    qr = np.linalg.qr(R @ qr[:, o2])[0]
                st[("v", k, i)], st[("QL", k, i)], st[("QR", k, i)] = v, ql, qr
            u = np.stack(upd).reshape(w.shape)
            out[k] = (w - lr * bc * u) * (1 - lr * weight_decay)
        return out

    return _run(step, p0, grad, steps)


def cosmos(
    p0, grad, steps, lr=2e-3, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, rank=2,
    ratio=0.1, gamma=0.2, aux=None,
):  # fmt: skip
    """COSMOS (lliu606/COSMOS ``COSMOS_optim.py`` @61de180e; arXiv 2502.17410 Alg. 1) in
    the Flax view X (fan_in × fan_out; the official ``grad.T``): M ← β₁M + X (sum
    momentum); the rank-r basis P of EMA(XXᵀ) — step 1: top-r eigenvectors of XXᵀ,
    S = (1 − β₂)CCᵀ with C = PᵀX; later steps one QR power step P' = QR(β₂PS +
    (1 − β₂)XXᵀP), T = PᵀP', S = β₂TᵀST + (1 − β₂)CCᵀ with C = P'ᵀX —; V ← β₂V +
    (1 − β₂)C²; Ĝ = (X + β₁M)/(1 + β₁c₁), c₁ = (1 − β₁ᵗ)/(1 − β₁); A = P(PᵀĜ/(√V/
    √(1 − β₂ᵗ) + ε)); R = NS5(Ĝ − PPᵀĜ) (Keller, in float64 here; the official casts to
    bf16), R ← √(nm)R/(‖R‖ + ε); U = A + γR; w ← w(1 − ηλ) − ηρ√(nm)U/(‖U‖ + ε).
    Fallback (bias, embedding): AdamW with the method's β, ε and decay (the official
    quirky Adam equals it at β₁ = 0.9). Eigenvector signs cancel (V is element-wise and
    QR(AD) = QR(A)·D-free for a sign matrix D), so parameters are compared directly."""

    def step(p, g, st, t):
        out = {}
        c1 = (1 - b1**t) / (1 - b1)
        for k, w in p.items():
            if not is_matrix(k, w):
                out[k] = w - lr * (adam_corrected(st, k, g[k], t, b1, b2, eps) + weight_decay * w)
                continue
            upd = []
            for i, x in enumerate(to_mats(k, g[k])):
                m = b1 * st.get(("m", k, i), 0.0) + x
                st[("m", k, i)] = m
                if t == 1:
                    P = _eigh_desc(x @ x.T)[:, :rank]
                    c = P.T @ x
                    S = (1 - b2) * c @ c.T
                else:
                    P0, S0 = st[("P", k, i)], st[("S", k, i)]
                    P = np.linalg.qr(b2 * P0 @ S0 + (1 - b2) * x @ (x.T @ P0))[0]
                    T = P0.T @ P
                    c = P.T @ x
                    S = b2 * T.T @ S0 @ T + (1 - b2) * c @ c.T
                v = b2 * st.get(("v", k, i), 0.0) + (1 - b2) * c * c
                st[("P", k, i)], st[("S", k, i)], st[("v", k, i)] = P, S, v
                gh = (x + b1 * m) / (1 + b1 * c1)
                coeff = P.T @ gh
                a = P @ (coeff / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps))
                r = _ns5(gh - P @ coeff)
                scale = math.sqrt(x.size)
                r = scale * r / (np.linalg.norm(r) + eps)
                u = a + gamma * r
                upd.append(ratio * scale * u / (np.linalg.norm(u) + eps))
            out[k] = w * (1 - lr * weight_decay) - lr * np.stack(upd).reshape(w.shape)
        return out

    return _run(step, p0, grad, steps)


MATRIX_REFERENCES: dict[str, Callable[..., list[Params]]] = {
    "lion_kappa": lion_kappa,
    "root": root,
    "galore_8bit": galore_8bit,
    "apollo": _apollo(tensor=False),
    "apollo_mini": _apollo(tensor=True),
    "dct_adamw": dct_adamw,
    "lipschitz_muon": lipschitz_muon,
    "frugal": frugal,
    "agvm_sgd": agvm_sgd,
    "sophia_g": _sophia("g"),
    "sophia_h": _sophia("h"),
    "adahessian": adahessian,
    "mfac": mfac,
    "mkor": _mkor(hybrid=False),
    "mkor_h": _mkor(hybrid=True),
    "soap": soap,
    "cosmos": cosmos,
}
_ = (math, Any, _adamw_leaf)
