"""CUDA C of the CuPy kernels, as plain strings: no CuPy needed to read or compile-check them.

Element-wise ops are ``cupy.ElementwiseKernel`` bodies (``ELEMENTWISE``: name → (in_params,
out_params, operation)); CuPy writes the loop and broadcasting around them (e.g. the bias (N,)
against a (B, N) array). Ops with a reduction or two outputs at different places are raw
kernels in ``RAW_SOURCE`` (``cupy.RawKernel``). All but the last are the C version of the
Numba-CUDA kernel of the same name in :mod:`kernels.numba_cuda`, which the tests check on the
simulator; ``standard_normal_v1`` makes the same Philox stream but takes sine and cosine from
CUDA's ``sincospif`` instead of the Numba kernel's polynomials (both match the NumPy oracle):

    matmul_v3            register-blocked 64×64 tiles, 4×4 outputs per thread (any shape,
                         ta / tb as arguments); used inside CUDA graphs instead of cuBLAS
    colsum_v1            one thread per column
    reparam_kl_v1        one block per example, tree sum in shared memory
    reparam_kl_backward_v1  one thread per latent, both halves of dh
    bernoulli_nll_v1     one block per example, tree sum in shared memory
    standard_normal_v1   one thread per Philox4x32-10 block: four normals by Box–Muller

Every constant is written as a float literal (``0.5f``): a bare ``0.5`` is a double and would
make the arithmetic float64.
"""

# ----------------------------------------------------------------------------------------------
# Element-wise kernels: (in_params, out_params, operation)
# ----------------------------------------------------------------------------------------------

_ACT_FORWARD = {
    "relu": "y = fmaxf(a + b, 0.0f)",
    "tanh": "y = tanhf(a + b)",
    "identity": "y = a + b",
}
_ACT_BACKWARD = {
    "relu": "dx = y > 0.0f ? dy : 0.0f",  # y > 0 exactly where a > 0
    "tanh": "dx = dy * (1.0f - y * y)",  # tanh′ = 1 − y²
    "identity": "dx = dy",
}

ELEMENTWISE = {
    **{f"bias_act_{act}": ("float32 a, float32 b", "float32 y", op) for act, op in _ACT_FORWARD.items()},
    **{f"act_backward_{act}": ("float32 dy, float32 y", "float32 dx", op) for act, op in _ACT_BACKWARD.items()},
    # Adam, in place on p, m, v; the bias corrections c = [c1, c2] are read from device memory so
    # that a captured CUDA graph picks up the step count at every replay.
    "adam": (
        "float32 g, float32 lr, float32 b1, float32 b2, float32 eps, raw float32 c",
        "float32 p, float32 m, float32 v",
        "m = b1 * m + (1.0f - b1) * g;"
        " v = b2 * v + (1.0f - b2) * (g * g);"
        " p -= lr * (m / c[0]) / (sqrtf(v / c[1]) + eps)",
    ),
}

# ----------------------------------------------------------------------------------------------
# Raw kernels
# ----------------------------------------------------------------------------------------------

GEMM_BM, GEMM_BN, GEMM_BK, GEMM_TM, GEMM_TN = 64, 64, 8, 4, 4
GEMM_THREADS = (GEMM_BN // GEMM_TN, GEMM_BM // GEMM_TM)  # (16, 16)
REDUCE_THREADS = 256  # block size of the row reductions: a power of two

RAW_SOURCE = r"""
#define BM 64
#define BN 64
#define BK 8
#define TM 4
#define TN 4
#define NT ((BM / TM) * (BN / TN))
#define REDUCE_THREADS 256

// out (M, N) = op(a) (M, K) · op(b) (K, N); op = transpose when ta / tb is non-zero.
// a is stored (K, M) when ta, else (M, K); b is stored (N, K) when tb, else (K, N).
extern "C" __global__ void matmul_v3(const float* a, const float* b, float* out,
                                     int M, int N, int K, int ta, int tb) {
    __shared__ float As[BK][BM];  // As[kk][r] = op(a)[i0 + r, k0 + kk]
    __shared__ float Bs[BK][BN];  // Bs[kk][c] = op(b)[k0 + kk, j0 + c]
    float acc[TM][TN];
    float ar[TM], br[TN];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int t = ty * (BN / TN) + tx;
    for (int bi = blockIdx.y; bi < (M + BM - 1) / BM; bi += gridDim.y) {
        for (int bj = blockIdx.x; bj < (N + BN - 1) / BN; bj += gridDim.x) {
            const int i0 = bi * BM, j0 = bj * BN;
            for (int r = 0; r < TM; r++)
                for (int c = 0; c < TN; c++) acc[r][c] = 0.0f;
            for (int k0 = 0; k0 < K; k0 += BK) {
                for (int e = t; e < BM * BK; e += NT) {  // stage op(a), coalesced on a
                    int r, kk;
                    if (ta) { kk = e / BM; r = e % BM; } else { r = e / BK; kk = e % BK; }
                    const int i = i0 + r, k = k0 + kk;
                    As[kk][r] = (i < M && k < K) ? (ta ? a[(size_t)k * M + i] : a[(size_t)i * K + k]) : 0.0f;
                }
                for (int e = t; e < BK * BN; e += NT) {  // stage op(b), coalesced on b
                    int c, kk;
                    if (tb) { c = e / BK; kk = e % BK; } else { kk = e / BN; c = e % BN; }
                    const int k = k0 + kk, j = j0 + c;
                    Bs[kk][c] = (k < K && j < N) ? (tb ? b[(size_t)j * K + k] : b[(size_t)k * N + j]) : 0.0f;
                }
                __syncthreads();
                #pragma unroll
                for (int kk = 0; kk < BK; kk++) {
                    for (int r = 0; r < TM; r++) ar[r] = As[kk][ty * TM + r];
                    for (int c = 0; c < TN; c++) br[c] = Bs[kk][tx * TN + c];
                    for (int r = 0; r < TM; r++)
                        for (int c = 0; c < TN; c++) acc[r][c] += ar[r] * br[c];
                }
                __syncthreads();
            }
            for (int r = 0; r < TM; r++) {
                const int i = i0 + ty * TM + r;
                for (int c = 0; c < TN; c++) {
                    const int j = j0 + tx * TN + c;
                    if (i < M && j < N) out[(size_t)i * N + j] = acc[r][c];
                }
            }
        }
    }
}

// out (N,) = Σ_batch dy (B, N): one thread per column, grid-stride.
extern "C" __global__ void colsum_v1(const float* dy, float* out, int B, int N) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < B; i++) acc += dy[(size_t)i * N + j];
        out[j] = acc;
    }
}

// Sum of v over the block (blockDim.x a power of two ≤ REDUCE_THREADS); the result in buf[0].
__device__ void block_sum(float* buf, float v) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step /= 2) {
        if (t < step) buf[t] += buf[t + step];
        __syncthreads();
    }
}

// h = [μ | log σ²] (B, 2Z), eps (B, Z) → z = μ + σ⊙ε (B, Z), kl = Σ ½(μ² + σ² − log σ² − 1) (B,).
extern "C" __global__ void reparam_kl_v1(const float* h, const float* eps, float* z, float* kl,
                                         int B, int Z) {
    __shared__ float buf[REDUCE_THREADS];
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        float part = 0.0f;
        for (int j = threadIdx.x; j < Z; j += blockDim.x) {
            const float mu = h[(size_t)b * 2 * Z + j], lv = h[(size_t)b * 2 * Z + Z + j];
            z[(size_t)b * Z + j] = mu + expf(0.5f * lv) * eps[(size_t)b * Z + j];
            part += mu * mu + expf(lv) - lv - 1.0f;
        }
        block_sum(buf, part);
        if (threadIdx.x == 0) kl[b] = 0.5f * buf[0];
        __syncthreads();  // buf[0] read before the next row overwrites buf
    }
}

// dh[:, :Z] = dz + c·μ;  dh[:, Z:] = dz ⊙ ½σ⊙ε + c·½(σ² − 1).
extern "C" __global__ void reparam_kl_backward_v1(const float* dz, const float* h, const float* eps,
                                                  float c, float* dh, int B, int Z) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < B * Z; e += gridDim.x * blockDim.x) {
        const int b = e / Z, j = e % Z;
        const float g = dz[e], mu = h[(size_t)b * 2 * Z + j], lv = h[(size_t)b * 2 * Z + Z + j];
        dh[(size_t)b * 2 * Z + j] = g + c * mu;
        dh[(size_t)b * 2 * Z + Z + j] = g * 0.5f * expf(0.5f * lv) * eps[e] + c * 0.5f * (expf(lv) - 1.0f);
    }
}

// loss (B,) = Σ_pixels softplus(a) − x·a;  da (B, D) = scale · (sigmoid(a) − x).
extern "C" __global__ void bernoulli_nll_v1(const float* a, const float* x, float scale,
                                            float* loss, float* da, int B, int D) {
    __shared__ float buf[REDUCE_THREADS];
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        float part = 0.0f;
        for (int j = threadIdx.x; j < D; j += blockDim.x) {
            const size_t e = (size_t)b * D + j;
            const float aj = a[e], xj = x[e];
            const float ex = expf(-fabsf(aj));  // in (0, 1]
            part += fmaxf(aj, 0.0f) + log1pf(ex) - xj * aj;
            const float p = aj >= 0.0f ? 1.0f / (1.0f + ex) : ex / (1.0f + ex);
            da[e] = scale * (p - xj);
        }
        block_sum(buf, part);
        if (threadIdx.x == 0) loss[b] = buf[0];
        __syncthreads();
    }
}

// ε: the stream of kernels.reference.standard_normal_philox for the key (k0, k1). Block i is
// Philox4x32-10 of the counter (i, 0, 0, 0); (w0, w1) and (w2, w3) become two pairs of normals by
// Box–Muller with u = (⌊w/2⁹⌋ + ½)·2⁻²³ and θ = 2π·⌊w/2⁸⌋·2⁻²⁴ = π·(⌊w/2⁸⌋·2⁻²³) (sincospif:
// no rounding of π); number l of block i goes to out[l·n4 + i].
extern "C" __global__ void standard_normal_v1(unsigned int k0, unsigned int k1, float* out, long long n) {
    const long long n4 = (n + 3) / 4;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned int c0 = (unsigned int)i, c1 = 0u, c2 = 0u, c3 = 0u, a = k0, b = k1;
        for (int r = 0; r < 10; ++r) {
            const unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
            const unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
            c0 = hi1 ^ c1 ^ a;
            c1 = lo1;
            c2 = hi0 ^ c3 ^ b;
            c3 = lo0;
            a += 0x9E3779B9u;
            b += 0xBB67AE85u;
        }
        const unsigned int w[4] = {c0, c1, c2, c3};
        for (int pair = 0; pair < 2; ++pair) {
            const float u = ((float)(w[2 * pair] >> 9) + 0.5f) * 1.1920928955078125e-7f;  // 2⁻²³
            const float r = sqrtf(-2.0f * logf(u));
            float s, c;
            sincospif((float)(w[2 * pair + 1] >> 8) * 1.1920928955078125e-7f, &s, &c);
            const long long e = 2 * pair * n4 + i;
            if (e < n) out[e] = r * c;
            if (e + n4 < n) out[e + n4] = r * s;
        }
    }
}
"""

RAW_KERNELS = (
    "matmul_v3",
    "colsum_v1",
    "reparam_kl_v1",
    "reparam_kl_backward_v1",
    "bernoulli_nll_v1",
    "standard_normal_v1",
)


def elementwise_harness(name):
    """A ``__global__`` function around an element-wise body, for compile-checking it with NVRTC.

    CuPy generates the real loop; this only declares the names the body uses with the same C
    types (``raw`` arrays as pointers, every other parameter as a float reference to one element:
    a scalar argument is a float there too) so that the body is compiled exactly as written.
    """
    in_params, out_params, operation = ELEMENTWISE[name]
    decls = []
    for i, p in enumerate(f"{in_params}, {out_params}".split(",")):
        words = p.split()
        raw = words[0] == "raw"
        ctype = {"float32": "float"}[words[-2]]
        decls.append((words[-1], ctype, raw, i))
    args = ", ".join(f"{c}* {n}_ptr" for n, c, _, _ in decls)
    body = []
    for n, c, raw, _ in decls:
        body.append(f"{c}* {n} = {n}_ptr;" if raw else f"{c}& {n} = {n}_ptr[i];")
    return (
        f'extern "C" __global__ void {name}_harness({args}, int n) {{\n'
        f"    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {{\n"
        f"        {' '.join(body)}\n        {operation};\n    }}\n}}\n"
    )
