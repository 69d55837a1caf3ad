// Row softmax: one work-group per row of n floats; the work-group size must be
// a power of two. Max and sum are tree-reduced in local memory.
__kernel void softmax(__global const float *x, __global float *y, const int n,
                      __local float *scratch) {
    int row = get_group_id(0), lid = get_local_id(0), ls = get_local_size(0);
    __global const float *xr = x + (size_t)row * n;
    __global float *yr = y + (size_t)row * n;
    float m = -INFINITY;
    for (int i = lid; i < n; i += ls) m = fmax(m, xr[i]);
    scratch[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] = fmax(scratch[lid], scratch[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f;
    for (int i = lid; i < n; i += ls) sum += exp(xr[i] - m);
    scratch[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sum = scratch[0];
    for (int i = lid; i < n; i += ls) yr[i] = exp(xr[i] - m) / sum;
}
