// C[M,N] = A[M,K] @ B[K,N], row-major, 16x16 tiles staged in shared memory.
// M, N, K must be multiples of TILE (the launcher pads nothing). CUDA twin of matmul.cl:
// OpenCL dimension 0 (columns) is CUDA x, dimension 1 (rows) is CUDA y; the tiles are
// static __shared__ arrays, as they were __local arrays declared in the OpenCL kernel.
#define TILE 16
extern "C" __global__ void matmul(const float *A, const float *B, float *C,
                                  const int M, const int N, const int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    int lr = threadIdx.y, lc = threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y, col = blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < K; t += TILE) {
        As[lr][lc] = A[row * K + t + lc];
        Bs[lr][lc] = B[(t + lr) * N + col];
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[lr][k] * Bs[k][lc];
        __syncthreads();
    }
    C[row * N + col] = acc;
}
