// Grouped launches (up to three matrices of one width against the same activation rows, one
// launch): blocks [0, b0) take the first matrix's rows, the next b1 the second's, the rest the
// third's, ROWS rows per block. Shared by the int8 matvec (matvec_int8.cu) and the dense one.

// The matrix of this block (its index within that matrix's blocks in *block), chosen without
// indexing the kernel's parameter array, which would copy the array to local memory. Matrix: a
// struct with `nrows`.
template <typename Matrix, unsigned int ROWS>
__device__ __forceinline__ Matrix group_block_matrix(const Matrix& m0, const Matrix& m1, const Matrix& m2,
                                                     unsigned int count, unsigned int* block) {
    const unsigned int b0 = (m0.nrows + ROWS - 1) / ROWS, b1 = (m1.nrows + ROWS - 1) / ROWS;
    *block = blockIdx.x;
    if (count < 2 || *block < b0) return m0;
    if (count < 3 || *block < b0 + b1) {
        *block -= b0;
        return m1;
    }
    *block -= b0 + b1;
    return m2;
}
