// C[M,N] = A[M,K] @ B[K,N], row-major, 16x16 tiles staged in local memory.
// M, N, K must be multiples of TILE (the launcher pads nothing).
#define TILE 16
__kernel void matmul(__global const float *A, __global const float *B,
                     __global float *C, const int M, const int N, const int K) {
    __local float As[TILE][TILE];
    __local float Bs[TILE][TILE];
    int lr = get_local_id(1), lc = get_local_id(0);
    int row = get_global_id(1), col = get_global_id(0);
    float acc = 0.0f;
    for (int t = 0; t < K; t += TILE) {
        As[lr][lc] = A[row * K + t + lc];
        Bs[lr][lc] = B[(t + lr) * N + col];
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TILE; ++k) acc += As[lr][k] * Bs[k][lc];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    C[row * N + col] = acc;
}
