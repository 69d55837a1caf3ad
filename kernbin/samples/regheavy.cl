// Register-heavy: every work-item computes a full R x R block of C = A @ B in
// private registers (R = 16: 256 accumulators plus 32 operands per step).
// C is (n*R) x (n*R), A is (n*R) x K, B is K x (n*R); global size = (n, n).
#define R 16
__kernel void regheavy(__global const float *A, __global const float *B,
                       __global float *C, const int K) {
    int bi = get_global_id(1), bj = get_global_id(0);
    int N = get_global_size(0) * R;
    float acc[R][R];
    #pragma unroll
    for (int i = 0; i < R; ++i)
        #pragma unroll
        for (int j = 0; j < R; ++j) acc[i][j] = 0.0f;
    for (int k = 0; k < K; ++k) {
        float a[R], b[R];
        #pragma unroll
        for (int i = 0; i < R; ++i) a[i] = A[(bi * R + i) * K + k];
        #pragma unroll
        for (int j = 0; j < R; ++j) b[j] = B[k * N + bj * R + j];
        #pragma unroll
        for (int i = 0; i < R; ++i)
            #pragma unroll
            for (int j = 0; j < R; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    #pragma unroll
    for (int i = 0; i < R; ++i)
        #pragma unroll
        for (int j = 0; j < R; ++j) C[(bi * R + i) * N + bj * R + j] = acc[i][j];
}
