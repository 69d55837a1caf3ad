// Partial sums: each work-group reduces its slice of x into out[group] with a
// tree reduction in local memory (power-of-two work-group size).
__kernel void reduce_sum(__global const float *x, __global float *out,
                         const int n, __local float *scratch) {
    int gid = get_global_id(0), lid = get_local_id(0), ls = get_local_size(0);
    float v = 0.0f;
    for (int i = gid; i < n; i += get_global_size(0)) v += x[i];
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) out[get_group_id(0)] = scratch[0];
}
