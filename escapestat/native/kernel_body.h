/* The kernels for one floating type; kernels.c includes this once for float, once for
 * double, with T (scalar), V / VU (aligned / unaligned 64-byte vector), VI (its integer
 * mask type), VL (lanes), SFX (name suffix), VEXP, LOG and SQRT defined. */

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SFX)

INLINE V FN(ld)(const T* p) { return *(const VU*)p; }
INLINE void FN(st)(T* p, V v) { *(VU*)p = v; }
INLINE V FN(bc)(T x) { return (V){0} + x; }
INLINE V FN(vmax)(V a, V b) { VI g = a > b; return (V)(((VI)a & g) | ((VI)b & ~g)); }

/* A zeroed scratch array of n elements, 64-byte aligned (NULL if out of memory). */
static T* FN(scratch)(int64_t n) {
    size_t bytes = ((size_t)n * sizeof(T) + 63) / 64 * 64;
    T* out = aligned_alloc(64, bytes ? bytes : 64);
    if (out) memset(out, 0, bytes);
    return out;
}

/* lg[a, :] = h[a, :] · wt for IB rows a, NV vectors of classes (wt is Wᵀ, [W, Pp]). */
INLINE void FN(logits_tile)(const T* h, const T* wt, T* lg, int64_t W, int64_t Pp,
                            const int IB, const int NV) {
    V acc[8][4];
    for (int a = 0; a < IB; a++)
        for (int v = 0; v < NV; v++) acc[a][v] = (V){0};
    for (int64_t k = 0; k < W; k++) {
        V w[4];
        for (int v = 0; v < NV; v++) w[v] = FN(ld)(wt + k * Pp + v * VL);
        for (int a = 0; a < IB; a++) {
            V x = FN(bc)(h[a * W + k]);
            for (int v = 0; v < NV; v++) acc[a][v] += x * w[v];
        }
    }
    for (int a = 0; a < IB; a++)
        for (int v = 0; v < NV; v++) FN(st)(lg + a * Pp + v * VL, acc[a][v]);
}

/* lg [B, Pp] = h [B, W] · wt [W, Pp]: register tiles where the class count allows. */
static void FN(logits)(const T* h, const T* wt, T* lg, int64_t B, int64_t W, int64_t Pp) {
    int64_t nv = Pp / VL, i = 0;
    if (nv == 1) for (; i + 8 <= B; i += 8) FN(logits_tile)(h + i * W, wt, lg + i * Pp, W, Pp, 8, 1);
    if (nv == 2) for (; i + 8 <= B; i += 8) FN(logits_tile)(h + i * W, wt, lg + i * Pp, W, Pp, 8, 2);
    if (nv == 3) for (; i + 4 <= B; i += 4) FN(logits_tile)(h + i * W, wt, lg + i * Pp, W, Pp, 4, 3);
    if (nv == 4) for (; i + 4 <= B; i += 4) FN(logits_tile)(h + i * W, wt, lg + i * Pp, W, Pp, 4, 4);
    for (; i < B; i++)
        for (int64_t v = 0; v < nv; v++) {
            V acc = {0};
            for (int64_t k = 0; k < W; k++) acc += FN(bc)(h[i * W + k]) * FN(ld)(wt + k * Pp + v * VL);
            FN(st)(lg + i * Pp + v * VL, acc);
        }
}

/* gw rows j (and j + 1 if TWO), columns [c, c + NB·VL): Σ_i δ[j, i] h[i, :]. */
INLINE void FN(gw_tile)(const T* d0, const T* d1, const T* h, T* g0, T* g1, int64_t B,
                        int64_t W, const int NB, const int TWO) {
    V a0[8], a1[8];
    for (int v = 0; v < NB; v++) { a0[v] = (V){0}; a1[v] = (V){0}; }
    for (int64_t i = 0; i < B; i++) {
        V s0 = FN(bc)(d0[i]), s1 = FN(bc)(TWO ? d1[i] : 0);
        for (int v = 0; v < NB; v++) {
            V x = FN(ld)(h + i * W + v * VL);
            a0[v] += s0 * x;
            if (TWO) a1[v] += s1 * x;
        }
    }
    for (int v = 0; v < NB; v++) {
        FN(st)(g0 + v * VL, a0[v]);
        if (TWO) FN(st)(g1 + v * VL, a1[v]);
    }
}

/* ∂z for rows i (and i + 1 if TWO), columns [c, c + NB·VL): Σ_j δ[j, i] W[j, :] ⊙ σ'(z),
 * added into ∇E at the rows of both operands. */
INLINE void FN(dz_tile)(const T* dt, int64_t Bp, int64_t i, const T* w, const T* z,
                        const int64_t* pr, T* ge, int64_t P, int64_t W, int64_t c, int act,
                        const int NB, const int TWO) {
    V a[2][8];
    for (int v = 0; v < NB; v++) { a[0][v] = (V){0}; a[1][v] = (V){0}; }
    for (int64_t j = 0; j < P; j++) {
        V s0 = FN(bc)(dt[j * Bp + i]), s1 = FN(bc)(TWO ? dt[j * Bp + i + 1] : 0);
        for (int v = 0; v < NB; v++) {
            V x = FN(ld)(w + j * W + c + v * VL);
            a[0][v] += s0 * x;
            if (TWO) a[1][v] += s1 * x;
        }
    }
    for (int q = 0; q < 1 + TWO; q++) {
        int64_t row = i + q;
        const T* zr = z + row * W + c;
        T* ga = ge + pr[2 * row] * W + c;
        T* gb = ge + (P + pr[2 * row + 1]) * W + c;
        for (int v = 0; v < NB; v++) {
            V zv = FN(ld)(zr + v * VL), g;
            if (act == 0) g = a[q][v] * zv * (T)2;          /* quadratic: σ' = 2z */
            else g = (V)((VI)a[q][v] & (VI)(zv > (T)0));     /* relu: σ' = [z > 0] */
            FN(st)(ga + v * VL, FN(ld)(ga + v * VL) + g);
            FN(st)(gb + v * VL, FN(ld)(gb + v * VL) + g);
        }
    }
}

/* z = E[a] + E[P + b] and h = σ(z) (act 0: z², 1: relu) for n pairs, rows of W; z is
 * skipped when NULL. */
static void FN(hidden)(const T* e, const int64_t* pr, int64_t n, int64_t P, int64_t W,
                       int act, T* z, T* h) {
    for (int64_t i = 0; i < n; i++) {
        const T* ea = e + pr[2 * i] * W;
        const T* eb = e + (P + pr[2 * i + 1]) * W;
        for (int64_t k = 0; k < W; k += VL) {
            V v = FN(ld)(ea + k) + FN(ld)(eb + k);
            if (z) FN(st)(z + i * W + k, v);
            FN(st)(h + i * W + k, act == 0 ? v * v : FN(vmax)(v, (V){0}));
        }
    }
}

/* wt [W, Pp] = Wᵀ (columns P … Pp − 1 are left as they are: zero from scratch). */
static void FN(transpose)(const T* w, int64_t P, int64_t W, int64_t Pp, T* wt) {
    for (int64_t j = 0; j < P; j++)
        for (int64_t k = 0; k < W; k++) wt[k * Pp + j] = w[j * W + k];
}

/* ∇W [P, W] = δᵀ h, two classes at a time, in column blocks of up to 8 vectors. */
static void FN(grad_weight)(const T* dt, int64_t Bp, const T* h, T* gw, int64_t B, int64_t P,
                            int64_t W) {
    for (int64_t c = 0; c < W; c += 8 * VL) {
        int64_t nb = (W - c) / VL < 8 ? (W - c) / VL : 8;
        for (int64_t j = 0; j < P; j += 2) {
            const T *d0 = dt + j * Bp, *d1 = d0 + Bp;
            T *g0 = gw + j * W + c, *g1 = g0 + W;
            const T* hc = h + c;
            int two = j + 1 < P;
            if (nb == 8 && two) FN(gw_tile)(d0, d1, hc, g0, g1, B, W, 8, 1);
            else if (nb == 8) FN(gw_tile)(d0, d1, hc, g0, g1, B, W, 8, 0);
            else
                for (int64_t v = 0; v < nb; v++) {
                    if (two) FN(gw_tile)(d0, d1, hc + v * VL, g0 + v * VL, g1 + v * VL, B, W, 1, 1);
                    else FN(gw_tile)(d0, d1, hc + v * VL, g0 + v * VL, g1 + v * VL, B, W, 1, 0);
                }
        }
    }
}

/* ∇E [2P, W]: ∂z rows added at both operands' rows, two samples at a time. */
static void FN(grad_embed)(const T* dt, int64_t Bp, const T* w, const T* z, const int64_t* pr,
                           T* ge, int64_t B, int64_t P, int64_t W, int act) {
    memset(ge, 0, sizeof(T) * 2 * P * W);
    for (int64_t c = 0; c < W; c += 8 * VL) {
        int64_t nb = (W - c) / VL < 8 ? (W - c) / VL : 8;
        for (int64_t v = 0; v < nb; v += (nb == 8 ? 8 : 1)) {
            int64_t i = 0;
            if (nb == 8) {
                for (; i + 1 < B; i += 2) FN(dz_tile)(dt, Bp, i, w, z, pr, ge, P, W, c, act, 8, 1);
                if (i < B) FN(dz_tile)(dt, Bp, i, w, z, pr, ge, P, W, c, act, 8, 0);
            } else {
                for (; i + 1 < B; i += 2) FN(dz_tile)(dt, Bp, i, w, z, pr, ge, P, W, c + v * VL, act, 1, 1);
                if (i < B) FN(dz_tile)(dt, Bp, i, w, z, pr, ge, P, W, c + v * VL, act, 1, 0);
            }
        }
    }
}

/* Per replica r of R, on its minibatch pairs[r] [B, 2] (a, b) and labels[r] [B]:
 * z = E[a] + E[P + b], h = σ(z) (act 0: z², 1: relu), logits = W h, loss[r] = mean
 * cross-entropy, and its gradients ∇E [2P, W], ∇W [P, W] (mlp_ensemble.py's formulas).
 * The cross-entropy and δ are xent.py's (accurate when p_y is near 1; shifted logits
 * floored at floor_logp). A NaN or +inf logit reaches the sum ρ (the max may skip it, the
 * sum does not), so loss[r] is NaN, as in torch. Needs W a multiple of VL. Returns 0, or -1 (bad shape), -2 (memory). */
int FN(mlp_loss_grads)(int64_t R, int64_t B, int64_t P, int64_t W, int act,
                       const T* E, const T* Wo, const int64_t* pairs, const int64_t* labels,
                       T* gE, T* gW, T* loss, T floor_logp) {
    if (W % VL || B < 1 || P < 1 || R < 0) return -1;
    const int64_t Pp = (P + VL - 1) / VL * VL, Bp = (B + VL - 1) / VL * VL;
    int failed = 0;
    OMP(omp parallel)
    {
        unsigned int saved;
        FP_ENTER(saved);
        T* z = FN(scratch)(B * W);
        T* h = FN(scratch)(B * W);
        T* lg = FN(scratch)(B * Pp);
        T* wt = FN(scratch)(W * Pp);
        T* dt = FN(scratch)(P * Bp);
        int ok = z && h && lg && wt && dt;
        if (!ok) {
            OMP(omp atomic write)
            failed = 1;
        }
        OMP(omp for schedule(static))
        for (int64_t r = 0; r < R; r++) {
            if (!ok) continue;
            const T* e = E + r * 2 * P * W;
            const T* w = Wo + r * P * W;
            const int64_t* pr = pairs + r * B * 2;
            const int64_t* lb = labels + r * B;
            T* ge = gE + r * 2 * P * W;
            T* gw = gW + r * P * W;
            FN(hidden)(e, pr, B, P, W, act, z, h);
            FN(transpose)(w, P, W, Pp, wt);
            FN(logits)(h, wt, lg, B, W, Pp);
            /* δ = (softmax − onehot) / B, laid out [P, Bp] so that the softmax runs down
             * the classes with VL rows at a time. */
            for (int64_t i = 0; i < B; i++)
                for (int64_t j = 0; j < P; j++) dt[j * Bp + i] = lg[i * Pp + j];
            const T inv = (T)1 / (T)B;
            T total = 0;
            for (int64_t i0 = 0; i0 < Bp; i0 += VL) {
                /* xent.py's formulas: e_j = exp(max(l_j − m, floor)), ρ = Σ e_j over all
                 * but the first class at the maximum, −log p_y = log1p(ρ) − (l_y − m),
                 * δ = (e − [j = y](1 + ρ)) / ((1 + ρ) B). vmax(floor, x) keeps a NaN. */
                V m = FN(ld)(dt + i0), rest = {0}, fl = FN(bc)(floor_logp);
                for (int64_t j = 1; j < P; j++) m = FN(vmax)(m, FN(ld)(dt + j * Bp + i0));
                VI used = {0};
                for (int64_t j = 0; j < P; j++) {
                    V x = FN(ld)(dt + j * Bp + i0) - m;
                    VI top = (x == (T)0) & ~used;
                    used |= top;
                    V e = VEXP(FN(vmax)(fl, x));
                    rest += (V)((VI)e & ~top);
                    FN(st)(dt + j * Bp + i0, e);
                }
                for (int q = 0; q < VL && i0 + q < B; q++) {
                    int64_t y = lb[i0 + q];
                    total += LOG1P(rest[q]) - (lg[(i0 + q) * Pp + y] - m[q]);
                    T* ey = dt + y * Bp + i0 + q;
                    *ey = (*ey - (T)1) - rest[q];  /* e_y − 1 is exact; 1 + ρ would round ρ away */
                }
                V scale = FN(bc)(inv) / (rest + (T)1);
                for (int64_t j = 0; j < P; j++)
                    FN(st)(dt + j * Bp + i0, FN(ld)(dt + j * Bp + i0) * scale);
            }
            loss[r] = total * inv;
            FN(grad_weight)(dt, Bp, h, gw, B, P, W);
            FN(grad_embed)(dt, Bp, w, z, pr, ge, B, P, W, act);
        }
        free(z); free(h); free(lg); free(wt); free(dt);
        FP_LEAVE(saved);
    }
    return failed ? -2 : 0;
}

/* hits[r] = how many of replica r's pairs[r] [N, 2] have labels[r] as their argmax logit
 * (the first of equal maxima, a NaN counting as the maximum, as torch.argmax), in
 * blocks of 64 pairs. Returns 0, or -1 (bad shape), -2 (memory). */
int FN(mlp_hits)(int64_t R, int64_t N, int64_t P, int64_t W, int act, const T* E,
                 const T* Wo, const int64_t* pairs, const int64_t* labels, int64_t* hits) {
    if (W % VL || P < 1 || R < 0 || N < 0) return -1;
    const int64_t Pp = (P + VL - 1) / VL * VL, blk = 64;
    int failed = 0;
    OMP(omp parallel)
    {
        unsigned int saved;
        FP_ENTER(saved);
        T* h = FN(scratch)(blk * W);
        T* lg = FN(scratch)(blk * Pp);
        T* wt = FN(scratch)(W * Pp);
        int ok = h && lg && wt;
        if (!ok) {
            OMP(omp atomic write)
            failed = 1;
        }
        OMP(omp for schedule(static))
        for (int64_t r = 0; r < R; r++) {
            if (!ok) continue;
            const T* e = E + r * 2 * P * W;
            const T* w = Wo + r * P * W;
            FN(transpose)(w, P, W, Pp, wt);
            int64_t count = 0;
            for (int64_t i0 = 0; i0 < N; i0 += blk) {
                int64_t nb = N - i0 < blk ? N - i0 : blk;
                const int64_t* pr = pairs + (r * N + i0) * 2;
                FN(hidden)(e, pr, nb, P, W, act, NULL, h);
                FN(logits)(h, wt, lg, nb, W, Pp);
                for (int64_t i = 0; i < nb; i++) {
                    const T* li = lg + i * Pp;
                    int64_t best = 0;
                    T top = li[0];
                    if (top == top)
                        for (int64_t j = 1; j < P; j++) {
                            if (li[j] != li[j]) { best = j; break; }
                            if (li[j] > top) { top = li[j]; best = j; }
                        }
                    count += best == labels[r * N + i0 + i];
                }
            }
            hits[r] = count;
        }
        free(h); free(lg); free(wt);
        FP_LEAVE(saved);
    }
    return failed ? -2 : 0;
}

/* torch.optim.AdamW per replica (no amsgrad), lr and weight decay per replica:
 *   θ ← θ(1 − η λ);  m ← m + (1 − β₁)(g − m);  v ← β₂ v + (1 − β₂) g²;
 *   θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε),
 * the decay only where decay[k]. Parameter k is p[k] [R, sizes[k]] (contiguous), with
 * its gradient g[k] and moments m[k], v[k] alike. */
void FN(adamw)(int64_t R, int64_t n_params, const int64_t* sizes, const int8_t* decay,
               T* const* p, T* const* g, T* const* m, T* const* v, const T* lr, const T* wd,
               double beta1, double beta2, double eps, int64_t step) {
    const double bc1 = 1 - pow(beta1, (double)step), bc2 = sqrt(1 - pow(beta2, (double)step));
    const T keep1 = (T)(1 - beta1), b2 = (T)beta2, keep2 = (T)(1 - beta2), ep = (T)eps;
    const T root2 = (T)bc2;
    OMP(omp parallel)
    {
        unsigned int saved;
        FP_ENTER(saved);
        /* One parameter at a time, its replicas shared out: parameters differ in size by
         * 500× (a transformer's biases and its MLP matrices), so a split over
         * (parameter, replica) pairs leaves one thread twice the other's work. */
        for (int64_t k = 0; k < n_params; k++) {
            OMP(omp for schedule(static))
            for (int64_t r = 0; r < R; r++) {
                const int64_t n = sizes[k];
                T* restrict pp = p[k] + r * n;
                const T* restrict gg = g[k] + r * n;
                T* restrict mm = m[k] + r * n;
                T* restrict vv = v[k] + r * n;
                const T shrink = decay[k] ? (T)1 - lr[r] * wd[r] : (T)1;
                const T step_size = (T)(lr[r] / bc1);
                for (int64_t e = 0; e < n; e++) {
                    T gi = gg[e];
                    T mi = mm[e] + keep1 * (gi - mm[e]);
                    T vi = vv[e] * b2 + keep2 * gi * gi;
                    mm[e] = mi;
                    vv[e] = vi;
                    T denom = SQRT(vi) / root2 + ep;
                    pp[e] = pp[e] * shrink - step_size * (mi / denom);
                }
            }
        }
        FP_LEAVE(saved);
    }
}

#undef CAT2
#undef CAT
#undef FN
