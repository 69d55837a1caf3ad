// Register-heavy: every thread computes a full R x R block of C = A @ B in registers
// (R = 16: 256 accumulators plus 32 operands per step; expect ptxas to spill).
// C is (n*R) x (n*R), A is (n*R) x K, B is K x (n*R); the total thread count is (n, n)
// (x, y), exactly, as the OpenCL global size of regheavy.cl, whose CUDA twin this is.
#define R 16
extern "C" __global__ void regheavy(const float *A, const float *B, float *C, const int K) {
    int bi = blockIdx.y * blockDim.y + threadIdx.y, bj = blockIdx.x * blockDim.x + threadIdx.x;
    int N = gridDim.x * blockDim.x * R;
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
            for (int j = 0; j < R; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    #pragma unroll
    for (int i = 0; i < R; ++i)
        #pragma unroll
        for (int j = 0; j < R; ++j) C[(bi * R + i) * N + bj * R + j] = acc[i][j];
}
