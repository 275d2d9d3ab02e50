// Greedy choice per row of F32 logits: argmax, ties to the lowest id; 0xFFFFFFFF when the row
// holds a NaN or +inf or is all -inf. One block of GREEDY_THREADS threads per row: each thread
// scans a strided slice (GREEDY_BATCH loads at a time), then a shared-memory tree reduction keeps the (value, id) that wins
// (larger value, or equal value and lower id).

#define GREEDY_THREADS 1024
#define GREEDY_BATCH 8
#define NO_TOKEN 0xFFFFFFFFu

extern "C" __global__ void greedy_tokens_f32(const float* __restrict__ logits, unsigned int* __restrict__ out,
                                             unsigned int vocab) {
    __shared__ float best_value[GREEDY_THREADS];
    __shared__ unsigned int best_id[GREEDY_THREADS];
    __shared__ int bad[GREEDY_THREADS];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float value = NEG_INF;
    unsigned int id = NO_TOKEN;
    int non_finite = 0;
    // GREEDY_BATCH loads in flight per thread (a plain loop would wait for each in turn).
    for (unsigned int first = threadIdx.x; first < vocab; first += GREEDY_BATCH * blockDim.x) {
        float l[GREEDY_BATCH];
#pragma unroll
        for (int u = 0; u < GREEDY_BATCH; ++u) {
            const unsigned int i = first + u * blockDim.x;
            l[u] = i < vocab ? row[i] : NEG_INF;
        }
#pragma unroll
        for (int u = 0; u < GREEDY_BATCH; ++u) {
            if (isnan(l[u]) || l[u] == POS_INF) non_finite = 1;
            // A thread's ids rise (u, then the next batch), so `>` keeps its lowest id on ties.
            if (l[u] > value) { value = l[u]; id = first + u * blockDim.x; }
        }
    }
    best_value[threadIdx.x] = value;
    best_id[threadIdx.x] = id;
    bad[threadIdx.x] = non_finite;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            float v = best_value[threadIdx.x + stride];
            unsigned int j = best_id[threadIdx.x + stride];
            if (v > best_value[threadIdx.x] || (v == best_value[threadIdx.x] && j < best_id[threadIdx.x])) {
                best_value[threadIdx.x] = v;
                best_id[threadIdx.x] = j;
            }
            bad[threadIdx.x] |= bad[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[blockIdx.x] = (bad[0] || best_value[0] == NEG_INF) ? NO_TOKEN : best_id[0];
    }
}
