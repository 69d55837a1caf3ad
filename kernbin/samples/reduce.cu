// Partial sums: each thread block reduces its slice of x into out[block] with a tree
// reduction in shared memory (power-of-two block size). CUDA twin of reduce.cl: its
// __local float *scratch parameter is dynamic shared memory here (blockDim.x floats,
// given as the launch's shared-memory bytes), so the kernel takes one parameter fewer.
extern "C" __global__ void reduce_sum(const float *x, float *out, const int n) {
    extern __shared__ float scratch[];
    int gid = blockIdx.x * blockDim.x + threadIdx.x, lid = threadIdx.x, ls = blockDim.x;
    int global_size = gridDim.x * blockDim.x;
    float v = 0.0f;
    for (int i = gid; i < n; i += global_size) v += x[i];
    scratch[lid] = v;
    __syncthreads();
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        __syncthreads();
    }
    if (lid == 0) out[blockIdx.x] = scratch[0];
}
