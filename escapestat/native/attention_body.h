/* The one-layer transformer's attention, per replica (transformer_ensemble.py's formulas):
 * kernels.c includes this once per floating type, after kernel_body.h (same macros).
 *
 * Shapes per replica: emb [N, d] (rows 0…V−1 the tokens, V…V+2 the positions; the token
 * "=" is V − 1), W_Q, W_K, W_V [H, d, dh], tokens [B, 3] (a, b, "="). The readout
 * position's query q_h = scale · x_eq W_Q[h] (x_eq = emb[V − 1] + emb[V + 2]) scores a
 * row by row · kq_h, kq_h = W_K[h] q_h; position s of sample b attends with
 * α[b, s, h] = softmax_s(S[t_s, h] + S[V + s, h]), S = emb kqᵀ, and its attended value
 * is z[b, h] = Σ_s α[b, s, h] (v[h, t_s] + v[h, V + s]), v[h] = emb W_V[h]. The output
 * projection (z · W_O) and everything after it stay in torch (they are large matmuls). */

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SFX)

/* Σ a[i] b[i], VL lanes at a time, then the lanes in order. */
static T FN(dot)(const T* a, const T* b, int64_t n) {
    V acc = {0};
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc += FN(ld)(a + i) * FN(ld)(b + i);
    T s = 0;
    for (int q = 0; q < VL; q++) s += acc[q];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[0:NV·VL] = scale · Σ_k x[k·xs] rows[k·rs + 0:NV·VL], accumulated in registers. */
INLINE void FN(gemv_tile)(const T* x, int64_t xs, const T* rows, int64_t rs, int64_t n,
                          T scale, T* out, const int NV) {
    V acc[4];
    for (int v = 0; v < NV; v++) acc[v] = (V){0};
    for (int64_t k = 0; k < n; k++) {
        V s = FN(bc)(x[k * xs]);
        for (int v = 0; v < NV; v++) acc[v] += s * FN(ld)(rows + k * rs + v * VL);
    }
    for (int v = 0; v < NV; v++) FN(st)(out + v * VL, acc[v] * scale);
}

/* out[0:m] = scale · Σ_k x[k·xs] rows[k·rs + 0:m] for a short row length m (a head's dh):
 * register tiles when m is 1, 2 or 4 vectors; plain loops otherwise. */
static void FN(gemv)(const T* x, int64_t xs, const T* rows, int64_t rs, int64_t n, T scale,
                     T* out, int64_t m) {
    if (m == VL) FN(gemv_tile)(x, xs, rows, rs, n, scale, out, 1);
    else if (m == 2 * VL) FN(gemv_tile)(x, xs, rows, rs, n, scale, out, 2);
    else if (m == 4 * VL) FN(gemv_tile)(x, xs, rows, rs, n, scale, out, 4);
    else {
        for (int64_t c = 0; c < m; c++) out[c] = 0;
        for (int64_t k = 0; k < n; k++)
            for (int64_t c = 0; c < m; c++) out[c] += x[k * xs] * rows[k * rs + c];
        for (int64_t c = 0; c < m; c++) out[c] *= scale;
    }
}

/* y[0:m] += a · x[0:m] for a head's short rows. */
INLINE void FN(axpy)(T* y, T a, const T* x, int64_t m) {
    if (m % VL == 0 && m <= 4 * VL) {
        V s = FN(bc)(a);
        for (int64_t c = 0; c < m; c += VL) FN(st)(y + c, FN(ld)(y + c) + s * FN(ld)(x + c));
    } else {
        for (int64_t c = 0; c < m; c++) y[c] += a * x[c];
    }
}

/* Forward. Writes, per replica, q [H, dh], kq [H, d], v [H, N, dh], attn [B, 3, H] and
 * z [B, H·dh] (the backward reads the first four). Returns 0 or -2 (memory). */
int FN(attn_forward)(int64_t R, int64_t B, int64_t N, int64_t d, int64_t H, int64_t dh,
                     const T* emb, const T* wq, const T* wk, const T* wv,
                     const int64_t* tokens, T scale, T* q, T* kq, T* v, T* attn, T* z) {
    const int64_t V0 = N - 3;   /* first position row */
    int failed = 0;
    OMP(omp parallel)
    {
        unsigned int saved;
        FP_ENTER(saved);
        T* x_eq = FN(scratch)(d);
        T* table = FN(scratch)(N * H);
        int ok = x_eq && table;
        if (!ok) {
            OMP(omp atomic write)
            failed = 1;
        }
        OMP(omp for schedule(static))
        for (int64_t r = 0; r < R; r++) {
            if (!ok) continue;
            const T* e = emb + r * N * d;
            const T *Q = wq + r * H * d * dh, *K = wk + r * H * d * dh, *Vw = wv + r * H * d * dh;
            T *qr = q + r * H * dh, *kqr = kq + r * H * d, *vr = v + r * H * N * dh;
            T *ar = attn + r * B * 3 * H, *zr = z + r * B * H * dh;
            const int64_t* tk = tokens + r * B * 3;
            for (int64_t k = 0; k < d; k++) x_eq[k] = e[(V0 - 1) * d + k] + e[(N - 1) * d + k];
            for (int64_t h = 0; h < H; h++) {
                T* qh = qr + h * dh;
                FN(gemv)(x_eq, 1, Q + h * d * dh, dh, d, scale, qh, dh);
                for (int64_t k = 0; k < d; k++) kqr[h * d + k] = FN(dot)(K + (h * d + k) * dh, qh, dh);
                for (int64_t n = 0; n < N; n++) table[n * H + h] = FN(dot)(e + n * d, kqr + h * d, d);
                for (int64_t n = 0; n < N; n++)
                    FN(gemv)(e + n * d, 1, Vw + h * d * dh, dh, d, 1, vr + (h * N + n) * dh, dh);
            }
            for (int64_t b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++) {
                    T s[3], top;
                    for (int j = 0; j < 3; j++)
                        s[j] = table[tk[b * 3 + j] * H + h] + table[(V0 + j) * H + h];
                    top = s[0] > s[1] ? s[0] : s[1];
                    top = top > s[2] ? top : s[2];
                    T sum = 0;
                    for (int j = 0; j < 3; j++) { s[j] = EXP(s[j] - top); sum += s[j]; }
                    T* zb = zr + (b * H + h) * dh;
                    for (int64_t c = 0; c < dh; c++) zb[c] = 0;
                    for (int j = 0; j < 3; j++) {
                        const T a = s[j] / sum;
                        ar[(b * 3 + j) * H + h] = a;
                        FN(axpy)(zb, a, vr + (h * N + tk[b * 3 + j]) * dh, dh);
                        FN(axpy)(zb, a, vr + (h * N + V0 + j) * dh, dh);
                    }
                }
        }
        free(x_eq); free(table);
        FP_LEAVE(saved);
    }
    return failed ? -2 : 0;
}

/* Backward from dz [B, H·dh] (∂loss/∂z) and dx [d] (∂loss/∂x_eq from the residual
 * stream) to ∇W_Q, ∇W_K, ∇W_V [H, d, dh] and ∇emb, written as ∇W_E [V, d] and
 * ∇W_pos [3, d]. Returns 0 or -2 (memory). */
int FN(attn_backward)(int64_t R, int64_t B, int64_t N, int64_t d, int64_t H, int64_t dh,
                      const T* emb, const T* wq, const T* wk, const T* wv,
                      const int64_t* tokens, T scale, const T* q, const T* kq, const T* v,
                      const T* attn, const T* dz, const T* dx, T* gq, T* gk, T* gv,
                      T* g_tok, T* g_pos) {
    const int64_t V0 = N - 3;
    int failed = 0;
    OMP(omp parallel)
    {
        unsigned int saved;
        FP_ENTER(saved);
        T* x_eq = FN(scratch)(d);
        T* d_x = FN(scratch)(d);
        T* d_table = FN(scratch)(N * H);
        T* d_v = FN(scratch)(H * N * dh);
        T* d_kq = FN(scratch)(H * d);
        T* d_q = FN(scratch)(H * dh);
        T* wvt = FN(scratch)(H * dh * d);
        T* d_emb = FN(scratch)(N * d);
        int ok = x_eq && d_x && d_table && d_v && d_kq && d_q && wvt && d_emb;
        if (!ok) {
            OMP(omp atomic write)
            failed = 1;
        }
        OMP(omp for schedule(static))
        for (int64_t r = 0; r < R; r++) {
            if (!ok) continue;
            const T* e = emb + r * N * d;
            const T *Q = wq + r * H * d * dh, *K = wk + r * H * d * dh, *Vw = wv + r * H * d * dh;
            const T *qr = q + r * H * dh, *kqr = kq + r * H * d, *vr = v + r * H * N * dh;
            const T *ar = attn + r * B * 3 * H, *dzr = dz + r * B * H * dh;
            const int64_t* tk = tokens + r * B * 3;
            T *gqr = gq + r * H * d * dh, *gkr = gk + r * H * d * dh, *gvr = gv + r * H * d * dh;
            memset(d_table, 0, sizeof(T) * N * H);
            memset(d_v, 0, sizeof(T) * H * N * dh);
            memset(d_emb, 0, sizeof(T) * N * d);
            for (int64_t b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++) {
                    const T* g = dzr + (b * H + h) * dh;
                    T da[3], a[3], mean = 0;
                    for (int j = 0; j < 3; j++) {
                        const int64_t rows[2] = {tk[b * 3 + j], V0 + j};
                        a[j] = ar[(b * 3 + j) * H + h];
                        da[j] = 0;
                        for (int w = 0; w < 2; w++) {
                            const T* vn = vr + (h * N + rows[w]) * dh;
                            T* dvn = d_v + (h * N + rows[w]) * dh;
                            da[j] += FN(dot)(g, vn, dh);
                            FN(axpy)(dvn, a[j], g, dh);
                        }
                        mean += a[j] * da[j];
                    }
                    for (int j = 0; j < 3; j++) {   /* softmax over the three positions */
                        const T ds = a[j] * (da[j] - mean);
                        d_table[tk[b * 3 + j] * H + h] += ds;
                        d_table[(V0 + j) * H + h] += ds;
                    }
                }
            for (int64_t k = 0; k < d; k++) {
                x_eq[k] = e[(V0 - 1) * d + k] + e[(N - 1) * d + k];
                d_x[k] = dx[r * d + k];
            }
            for (int64_t h = 0; h < H; h++) {
                /* S = emb kqᵀ */
                T* dkq = d_kq + h * d;
                for (int64_t k = 0; k < d; k++) dkq[k] = 0;
                for (int64_t n = 0; n < N; n++) {
                    const T t = d_table[n * H + h];
                    const T* en = e + n * d;
                    T* de = d_emb + n * d;
                    const T* kh = kqr + h * d;
                    for (int64_t k = 0; k < d; k++) { dkq[k] += t * en[k]; de[k] += t * kh[k]; }
                }
                /* kq = W_K q: ∇W_K = ∂kq ⊗ q; ∂q (times scale, for q = scale · x_eq W_Q) */
                const T* qh = qr + h * dh;
                T* dq = d_q + h * dh;
                FN(gemv)(dkq, 1, K + h * d * dh, dh, d, scale, dq, dh);
                for (int64_t k = 0; k < d; k++) {
                    T* gkrow = gkr + (h * d + k) * dh;
                    T* gqrow = gqr + (h * d + k) * dh;
                    for (int64_t c = 0; c < dh; c++) { gkrow[c] = 0; gqrow[c] = 0; }
                    FN(axpy)(gkrow, dkq[k], qh, dh);
                    FN(axpy)(gqrow, x_eq[k], dq, dh);
                    d_x[k] += FN(dot)(Q + (h * d + k) * dh, dq, dh);
                }
                /* v = emb W_V: ∇W_V = embᵀ ∂v, ∂emb += ∂v W_Vᵀ (W_V transposed once) */
                for (int64_t k = 0; k < d; k++)
                    for (int64_t c = 0; c < dh; c++) wvt[(h * dh + c) * d + k] = Vw[(h * d + k) * dh + c];
                for (int64_t k = 0; k < d; k++)
                    FN(gemv)(e + k, d, d_v + h * N * dh, dh, N, 1, gvr + (h * d + k) * dh, dh);
                for (int64_t n = 0; n < N; n++) {
                    T* de = d_emb + n * d;
                    const T* dvn = d_v + (h * N + n) * dh;
                    for (int64_t c = 0; c < dh; c++) {
                        const T s = dvn[c];
                        const T* col = wvt + (h * dh + c) * d;
                        for (int64_t k = 0; k < d; k++) de[k] += s * col[k];
                    }
                }
            }
            for (int64_t k = 0; k < d; k++) {
                d_emb[(V0 - 1) * d + k] += d_x[k];
                d_emb[(N - 1) * d + k] += d_x[k];
            }
            memcpy(g_tok + r * V0 * d, d_emb, sizeof(T) * V0 * d);
            memcpy(g_pos + r * 3 * d, d_emb + V0 * d, sizeof(T) * 3 * d);
        }
        free(x_eq); free(d_x); free(d_table); free(d_v); free(d_kq); free(d_q); free(wvt);
        free(d_emb);
        FP_LEAVE(saved);
    }
    return failed ? -2 : 0;
}

#undef CAT2
#undef CAT
#undef FN
