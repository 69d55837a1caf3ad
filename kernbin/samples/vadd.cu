// Element-wise c = a + b over n floats. CUDA twin of vadd.cl (same name, parameters and
// indexing: the OpenCL global id 0 is blockIdx.x * blockDim.x + threadIdx.x).
extern "C" __global__ void vadd(const float *a, const float *b, float *c, const int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
