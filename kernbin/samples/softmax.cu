// Row softmax: one thread block per row of n floats; the block size must be a power of
// two. Max and sum are tree-reduced in shared memory. CUDA twin of softmax.cl: its
// __local float *scratch parameter is dynamic shared memory here (blockDim.x floats,
// given as the launch's shared-memory bytes), so the kernel takes one parameter fewer.
extern "C" __global__ void softmax(const float *x, float *y, const int n) {
    extern __shared__ float scratch[];
    int row = blockIdx.x, lid = threadIdx.x, ls = blockDim.x;
    const float *xr = x + (size_t)row * n;
    float *yr = y + (size_t)row * n;
    float m = -__int_as_float(0x7f800000);  // -INFINITY
    for (int i = lid; i < n; i += ls) m = fmaxf(m, xr[i]);
    scratch[lid] = m;
    __syncthreads();
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] = fmaxf(scratch[lid], scratch[lid + s]);
        __syncthreads();
    }
    m = scratch[0];
    __syncthreads();
    float sum = 0.0f;
    for (int i = lid; i < n; i += ls) sum += expf(xr[i] - m);
    scratch[lid] = sum;
    __syncthreads();
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        __syncthreads();
    }
    sum = scratch[0];
    for (int i = lid; i < n; i += ls) yr[i] = expf(xr[i] - m) / sum;
}
