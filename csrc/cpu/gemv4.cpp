/* gemv4.cpp: CPU entry point of the 4-bit matrix-vector product out = A @ W.T (+ bias) (libkbit_cpu).
 * The math and the summation order are numerics/blockwise4.h (32 lanes, one fused multiply-add per term, a pairwise
 * lane tree). This file owns the loops: cpu/parallel.h over output features, each output computed by one thread in
 * the fixed order, so the result does not depend on the thread count.
 *
 * Instruction sets (cpu/simd4.h): the baseline copy is portable C++ (fmaf). For K not a multiple of 32 the AVX2
 * and AVX-512 copies decode a weight row into an L1 buffer and run the dot products over it. For K a multiple of 32
 * they decode in registers: AVX-512 16 codes per vpermps over the block's 16 values; AVX2 32 codes per four
 * vpshufb over the byte planes of the table, times the block's absmax. Both compute tiles of rows of A by weight
 * rows over slices of K that keep A's slice in L1 (A is rearranged once per call so that each chunk of 32 of every
 * row is contiguous, in the register order of the lanes of that instruction set). AVX2 needs four registers per
 * sum, so from 3 rows of A on it decodes each weight row's slice once into an L1 buffer and multiplies 4 rows of A
 * by 2 weight rows over it, one lane register at a time. Every copy performs the same fused step per lane in the
 * same order and the same lane tree, so all three write identical bits. */
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/args.h"
#include "common/host_tables.h"
#include "cpu/parallel.h"
#include "cpu/simd4.h"
#include "numerics/blockwise4.h"
#include "numerics/float16.h"

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's AVX-512 intrinsics fill unused sources with _mm512_undefined_*() and then warn that they may be used
// uninitialized (GCC bug 105593, fixed in 13); the values are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace kbit {
namespace {

/* One weight matrix and the rows of A (float32, M x K) it multiplies. */
struct GemvProblem {
  const float* a;
  const uint8_t* packed;
  const float* absmax;
  const float* table;
  int64_t M, N, K;
  int32_t log2_bs;
  uint8_t planes[4][16];  // the table's byte planes: planes[b][c] = byte b of table[c] (the AVX2 decode)
};

/* A float buffer whose data() starts on a 64-byte cache line. std::vector's memory is only 16-byte aligned (and a
 * large block sits 16 bytes into its pages), so every second 32-byte load from it would span two cache lines: the
 * rearranged A, the decode buffer and the lanes are read that way in every inner loop. */
class LineBuffer {
 public:
  explicit LineBuffer(size_t n = 0) { resize(n); }
  void resize(size_t n) { storage_.resize(n + kPad); }
  float* data() {
    const uintptr_t at = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + ((kLine - at % kLine) % kLine) / sizeof(float);
  }

 private:
  static constexpr uintptr_t kLine = 64;
  static constexpr size_t kPad = kLine / sizeof(float);
  std::vector<float> storage_;
};

/* The table's byte planes, once per call (GemvProblem::planes). */
void fill_byte_planes(const float* table, uint8_t (*planes)[16]) {
  for (int c = 0; c < 16; ++c) {
    uint32_t bits;
    memcpy(&bits, table + c, 4);
    for (int b = 0; b < 4; ++b) planes[b][c] = static_cast<uint8_t>(bits >> (8 * b));
  }
}

/* Weight rows are taken kGroupRows at a time (gemv_chunked_*); a tile prefetches the rows one group ahead. */
constexpr int64_t kGroupRows = 16;

/* Where a fused tile starts (scalar, shared by the AVX-512 and AVX2 tiles): A's chunks are [chunk][row][32]
 * (prepare_a), so A's rows m0.. at chunk k0 / 32 and a_step floats to the next chunk; weight row j0 + r at
 * rows[r]; and `ahead`, the same bytes of the row kGroupRows rows on, fetched into L2 while this group is computed
 * (the next group's tiles then start on cached rows instead of waiting for memory at every row and slice). */
template <int NR>
struct TileStart {
  const float* a;
  int64_t a_step, ahead;
  const uint8_t* rows[NR];
};

template <int NR>
KBIT_ALWAYS_INLINE TileStart<NR> tile_start(const GemvProblem& p, int64_t m0, int64_t j0, int64_t k0) {
  TileStart<NR> s;
  s.a = p.a + ((k0 / kGemvLanes) * p.M + m0) * kGemvLanes;
  s.a_step = p.M * kGemvLanes;
  s.ahead = kGroupRows * (p.K / 2);
  for (int r = 0; r < NR; ++r) s.rows[r] = p.packed + (((j0 + r) * p.K) >> 1);
  return s;
}

/* The weight row's segment [k, stop) inside block `block`: the flat index of its first element and the block. */
struct Segment {
  int64_t begin, stop, block;
};

KBIT_ALWAYS_INLINE Segment segment_at(int64_t first, int64_t k, int64_t K, int32_t log2_bs) {
  const int64_t block = (first + k) >> log2_bs;  // a shift: a 64-bit division per block costs more than its decode
  const int64_t end_in_row = ((block + 1) << log2_bs) - first;  // the block's end, relative to the row
  return Segment{k, end_in_row < K ? end_in_row : K, block};
}

/* Codes [k, stop) (flat index of k: first + k), from the first whole byte on, through the block's 16 values. */
KBIT_ALWAYS_INLINE void decode_scalar_tail(const uint8_t* packed, int64_t first, int64_t k, int64_t stop,
                                           const float* scaled, float* w) {
  for (; k < stop; ++k) w[k] = scaled[nibble_at(packed, first + k)];
}

// ------------------------------------------------------------------------------------------ row decode

/* K consecutive elements first .. first + K - 1 of the flat quantized tensor (a weight row, or a part of one) as
 * float32. Blocks may span rows and a row may start at an odd nibble (odd K), so the range is cut at block
 * boundaries. */
void decode_row_base(const uint8_t* packed, const float* absmax, int64_t first, int64_t K, int32_t log2_bs,
                     const float* table, float* w) {
  for (int64_t k = 0; k < K;) {
    const Segment s = segment_at(first, k, K, log2_bs);
    float scaled[16];
    for (uint32_t c = 0; c < 16; ++c) scaled[c] = dequantize_4bit_value(c, absmax[s.block], table);
    decode_scalar_tail(packed, first, k, s.stop, scaled, w);
    k = s.stop;
  }
}

#if KBIT_X86_DISPATCH
/* The same values: whole bytes 4 at a time through the AVX2 lookup of simd4.h. */
KBIT_TARGET_AVX2 void decode_row_avx2(const uint8_t* packed, const float* absmax, int64_t first, int64_t K,
                                      int32_t log2_bs, const float* table, float* w) {
  for (int64_t k = 0; k < K;) {
    const Segment s = segment_at(first, k, K, log2_bs);
    float scaled[16];
    for (uint32_t c = 0; c < 16; ++c) scaled[c] = dequantize_4bit_value(c, absmax[s.block], table);
    if ((first + k) & 1) {  // a leading odd nibble alone
      w[k] = scaled[packed[(first + k) >> 1] & 15u];
      ++k;
    }
    const int64_t done = 2 * lookup_pairs_avx2<false>(packed + ((first + k) >> 1), w + k, (s.stop - k) / 2, scaled);
    decode_scalar_tail(packed, first, k + done, s.stop, scaled, w);
    k = s.stop;
  }
}

/* A block's 16 dequantized values, table[c] * absmax as dequantize_4bit_value computes them (a non-finite absmax
 * gives the canonical NaN); `values` holds the 16 table entries. */
KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE __m512 scaled_values_avx512(__m512 values, float scale) {
  return is_finite_scale(scale) ? _mm512_mul_ps(values, _mm512_set1_ps(scale)) : _mm512_set1_ps(canonical_nan());
}

/* The same values, 32 codes per step: 16 bytes split into nibbles in element order, widened to 32-bit indices
 * and looked up in the block's 16 values with one vpermps per 16. The block's values are table[c] * absmax, the
 * float32 product dequantize_4bit_value computes (a non-finite absmax gives the canonical NaN). */
KBIT_TARGET_AVX512 void decode_row_avx512(const uint8_t* packed, const float* absmax, int64_t first, int64_t K,
                                          int32_t log2_bs, const float* table, float* w) {
  const __m512 values = _mm512_loadu_ps(table);
  const __m128i low4 = _mm_set1_epi8(15);
  for (int64_t k = 0; k < K;) {
    const Segment s = segment_at(first, k, K, log2_bs);
    const __m512 v = scaled_values_avx512(values, absmax[s.block]);
    alignas(64) float scaled[16];
    _mm512_store_ps(scaled, v);
    if ((first + k) & 1) {
      w[k] = scaled[packed[(first + k) >> 1] & 15u];
      ++k;
    }
    const uint8_t* src = packed + ((first + k) >> 1);
    for (; k + 32 <= s.stop; k += 32, src += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4), lo = _mm_and_si128(bytes, low4);
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
      const __m512i i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
      _mm512_storeu_ps(w + k, _mm512_mask_permutexvar_ps(v, 0xffff, i0, v));
      _mm512_storeu_ps(w + k + 16, _mm512_mask_permutexvar_ps(v, 0xffff, i1, v));
    }
    decode_scalar_tail(packed, first, k, s.stop, scaled, w);
    k = s.stop;
  }
}

#endif

// ------------------------------------------------------------------------------------------ dot products

/* The end of one lane-ordered dot product: lanes hold the sums over k < k0 (a multiple of 32); the tail
 * k0..K-1 goes to lanes 0.., then the pairwise lane tree of blockwise4.h. Returns lane 0. */
KBIT_ALWAYS_INLINE float finish_lanes(float* lanes, const float* a, const float* w, int64_t k0, int64_t K) {
  for (int l = 0; k0 + l < K; ++l) lanes[l] = gemv_step(lanes[l], a[k0 + l], w[k0 + l]);
  for (int offset = kGemvLanes / 2; offset >= 1; offset >>= 1)
    for (int l = 0; l < offset; ++l) lanes[l] = lanes[l] + lanes[l + offset];
  return lanes[0];
}

/* sums[m] = the lane-ordered dot product of A's row m with w, for m in [0, M): portable copy. */
void dots_base(const float* a, int64_t M, int64_t K, const float* w, float* sums) {
  for (int64_t m = 0; m < M; ++m) {
    const float* am = a + m * K;
    float lanes[kGemvLanes] = {};
    int64_t k = 0;
    for (; k + kGemvLanes <= K; k += kGemvLanes)
      for (int l = 0; l < kGemvLanes; ++l) lanes[l] = gemv_step(lanes[l], am[k + l], w[k + l]);
    sums[m] = finish_lanes(lanes, am, w, k, K);
  }
}

#if KBIT_X86_DISPATCH
/* MT rows of A at once, lanes l in register l / 8 (element l % 8): each weight chunk is loaded once for MT rows.
 * one vfmadd per term, as gemv_step: the same single rounding per term as the portable copy. */
template <int MT>
KBIT_TARGET_AVX2 void dot_tile_avx2(const float* a, int64_t K, const float* w, float* sums) {
  __m256 acc[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 4; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + kGemvLanes <= K; k += kGemvLanes) {
    const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
    const __m256 w2 = _mm256_loadu_ps(w + k + 16), w3 = _mm256_loadu_ps(w + k + 24);
    for (int m = 0; m < MT; ++m) {
      const float* am = a + m * K + k;
      acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(am), w0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(_mm256_loadu_ps(am + 8), w1, acc[m][1]);
      acc[m][2] = _mm256_fmadd_ps(_mm256_loadu_ps(am + 16), w2, acc[m][2]);
      acc[m][3] = _mm256_fmadd_ps(_mm256_loadu_ps(am + 24), w3, acc[m][3]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    alignas(32) float lanes[kGemvLanes];
    for (int r = 0; r < 4; ++r) _mm256_store_ps(lanes + 8 * r, acc[m][r]);
    sums[m] = finish_lanes(lanes, a + m * K, w, k, K);
  }
}

KBIT_TARGET_AVX2 void dots_avx2(const float* a, int64_t M, int64_t K, const float* w, float* sums) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) dot_tile_avx2<2>(a + m * K, K, w, sums + m);
  if (m < M) dot_tile_avx2<1>(a + m * K, K, w, sums + m);
}

/* MT rows of A at once, lanes 0..15 in one register and 16..31 in the other. */
template <int MT>
KBIT_TARGET_AVX512 void dot_tile_avx512(const float* a, int64_t K, const float* w, float* sums) {
  __m512 acc[MT][2];
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kGemvLanes <= K; k += kGemvLanes) {
    const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
    for (int m = 0; m < MT; ++m) {
      const float* am = a + m * K + k;
      acc[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(am), w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(am + 16), w1, acc[m][1]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    alignas(64) float lanes[kGemvLanes];
    _mm512_store_ps(lanes, acc[m][0]);
    _mm512_store_ps(lanes + 16, acc[m][1]);
    sums[m] = finish_lanes(lanes, a + m * K, w, k, K);
  }
}

KBIT_TARGET_AVX512 void dots_avx512(const float* a, int64_t M, int64_t K, const float* w, float* sums) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) dot_tile_avx512<4>(a + m * K, K, w, sums + m);
  if (M - m >= 2) {
    dot_tile_avx512<2>(a + m * K, K, w, sums + m);
    m += 2;
  }
  if (m < M) dot_tile_avx512<1>(a + m * K, K, w, sums + m);
}

/* The block values of the element at flat index f (scaled_values_avx512 of its block's absmax). */
KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE __m512 block_values_avx512(const GemvProblem& p, __m512 values, int64_t f) {
  return scaled_values_avx512(values, p.absmax[f >> p.log2_bs]);
}


/* blockwise4.h's lane tree (l + 16 into l, then + 8, + 4, + 2, + 1) on lanes held as even (lanes 0, 2, .., 30) and
 * odd (1, 3, .., 31) registers: every addition adds the same two lanes as the scalar tree, in vector registers. */
KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE __m256 upper_half_avx512(__m512 x) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));  // AVX-512F (extractf32x8 is DQ)
}

KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE float lane_tree_avx512(__m512 even, __m512 odd) {
  // + 16: lane 2i + 16 is even position i + 8, so the upper half of each register onto its lower half
  const __m256 e8 = _mm256_add_ps(_mm512_castps512_ps256(even), upper_half_avx512(even));
  const __m256 o8 = _mm256_add_ps(_mm512_castps512_ps256(odd), upper_half_avx512(odd));
  // + 8 (lanes 0..7 are positions 0..3 of each), + 4 (positions 0..1), + 2 (position 0)
  const __m128 e4 = _mm_add_ps(_mm256_castps256_ps128(e8), _mm256_extractf128_ps(e8, 1));
  const __m128 o4 = _mm_add_ps(_mm256_castps256_ps128(o8), _mm256_extractf128_ps(o8, 1));
  const __m128 e2 = _mm_add_ps(e4, _mm_movehl_ps(e4, e4)), o2 = _mm_add_ps(o4, _mm_movehl_ps(o4, o4));
  const __m128 e1 = _mm_add_ss(e2, _mm_shuffle_ps(e2, e2, 1)), o1 = _mm_add_ss(o2, _mm_shuffle_ps(o2, o2, 1));
  return _mm_cvtss_f32(_mm_add_ss(e1, o1));  // + 1: lane 0 + lane 1
}

/* One chunk of 32 codes of NR weight rows at k (the block values v), times MT rows of A (a: the chunk's rows). */
template <int MT, int NR>
KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE void chunk_avx512(const uint8_t* const* rows, int64_t ahead, int64_t k,
                                                        const __m512* v, const float* a, __m512 (*acc)[NR][2]) {
  __m512 w[NR][2];
  for (int r = 0; r < NR; ++r) {
    if ((k & 127) == 0)  // once per 64-byte line of the row
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + ahead + (k >> 1)), _MM_HINT_T1);
    const __m512i odd = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + (k >> 1))));
    w[r][0] = _mm512_permutexvar_ps(_mm512_srli_epi32(odd, 4), v[r]);
    w[r][1] = _mm512_permutexvar_ps(odd, v[r]);
  }
  for (int m = 0; m < MT; ++m) {
    const __m512 a0 = _mm512_loadu_ps(a + m * kGemvLanes), a1 = _mm512_loadu_ps(a + m * kGemvLanes + 16);
    for (int r = 0; r < NR; ++r) {
      acc[m][r][0] = _mm512_fmadd_ps(a0, w[r][0], acc[m][r][0]);
      acc[m][r][1] = _mm512_fmadd_ps(a1, w[r][1], acc[m][r][1]);
    }
  }
}

/* How a tile walks its segments of K, each with one set of block values per weight row: kPerChunk (rows may start
 * mid-block: the values are looked up for every chunk), kPerBlock (every row starts on a block boundary,
 * K % blocksize == 0: once per block segment), or 2 / 4 (the same with blocks of exactly 2 or 4 chunks, blocksize 64
 * or 128, and slices of whole blocks: the chunk loop unrolled). */
constexpr int kPerChunk = 0, kPerBlock = 1;

/* The fused AVX-512 tile for K a multiple of 32 (every block segment of a row is then whole chunks of 32): MT rows
 * of A times NR weight rows over k in [k0, k1), decoded in registers, 2 * MT * NR independent sums so that the
 * latency of one lane's chain is hidden. A chunk's 16 bytes widen to 16 dwords whose low 4 bits are the odd
 * elements' codes and whose bits 4..7 the even elements'; vpermps reads an index's low 4 bits only, so one shift
 * and two permutes look up 32 codes in the block's 16 values. The even elements land in register 0 and the odd
 * ones in register 1, and A is stored in the same order (prepare_a), so each register element holds one lane l
 * of blockwise4.h's order throughout; each step is one vfmadd (gemv_step's fused multiply-add).
 * The lanes of a tile start at zero (first slice) or from `lanes` ([MT][NR][32], register order), and are stored
 * there again unless this is the last slice; then the lane tree sums them into sums[m * NR + r]. Seg: the segment
 * walk above. */
template <int MT, int NR, int Seg>
KBIT_TARGET_AVX512 void tile_chunked_avx512(const GemvProblem& p, int64_t m0, int64_t j0, int64_t k0, int64_t k1,
                                            bool first, bool last, float* lanes, float* sums) {
  const int64_t K = p.K;
  const __m512 values = _mm512_loadu_ps(p.table);
  TileStart<NR> start = tile_start<NR>(p, m0, j0, k0);
  const float* a = start.a;
  const int64_t a_step = start.a_step, ahead = start.ahead;
  const uint8_t* const* rows = start.rows;
  __m512 acc[MT][NR][2];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < NR; ++r)
      for (int h = 0; h < 2; ++h)
        acc[m][r][h] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(lanes + ((m * NR + r) * 2 + h) * 16);
  __m512 v[NR];
  if constexpr (Seg >= 2) {
    for (int64_t k = k0; k < k1; k += Seg * kGemvLanes) {
      for (int r = 0; r < NR; ++r) v[r] = block_values_avx512(p, values, (j0 + r) * K + k);
      for (int c = 0; c < Seg; ++c, a += a_step) chunk_avx512<MT, NR>(rows, ahead, k + c * kGemvLanes, v, a, acc);
    }
  } else {
    const int64_t block = int64_t{1} << p.log2_bs;
    for (int64_t k = k0; k < k1;) {
      // the segment [k, stop): one block of every row (kPerBlock), or one chunk
      const int64_t stop = Seg == kPerBlock ? ((k | (block - 1)) + 1 < k1 ? (k | (block - 1)) + 1 : k1)
                                            : k + kGemvLanes;
      for (int r = 0; r < NR; ++r) v[r] = block_values_avx512(p, values, (j0 + r) * K + k);
      for (; k < stop; k += kGemvLanes, a += a_step) chunk_avx512<MT, NR>(rows, ahead, k, v, a, acc);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < NR; ++r) {
      float* mine = lanes + (m * NR + r) * kGemvLanes;
      if (!last) {
        _mm512_storeu_ps(mine, acc[m][r][0]);
        _mm512_storeu_ps(mine + 16, acc[m][r][1]);
        continue;
      }
      sums[m * NR + r] = lane_tree_avx512(acc[m][r][0], acc[m][r][1]);
    }
}

/* How A's columns are cut so that a slice of MT rows stays in L1 beside the streaming weight: about 16 KiB of
 * float32 per slice, in equal whole units (`unit`: 32, or a block for the unrolled segment walks; K is a multiple
 * of it). One slice when A's rows fit. */
int64_t slice_length(int64_t rows, int64_t K, int64_t unit) {
  constexpr int64_t kSliceFloats = 4096;
  const int64_t fit = (kSliceFloats / rows) / unit * unit;
  if (fit >= K || fit == 0) return K;  // (K == 0: no slice; a unit above the budget: one slice)
  const int64_t units = K / unit, slices = (K + fit - 1) / fit;
  return (units + slices - 1) / slices * unit;
}

/* The drivers below take an instruction set's tile as Tile<MT, NR, Seg>::run (tile_chunked_avx512 or
 * tile_chunked_avx2: the same arguments and contract). They hold no vector code, so they need no target. */
template <int MT, int NR, int Seg>
struct Avx512Tile {
  static void run(const GemvProblem& p, int64_t m0, int64_t j0, int64_t k0, int64_t k1, bool first, bool last,
                  float* lanes, float* sums) {
    tile_chunked_avx512<MT, NR, Seg>(p, m0, j0, k0, k1, first, last, lanes, sums);
  }
};

/* Weight rows [first, last) for A's rows [m0, m0 + MT), in groups of kGroupRows weight rows: slice by slice, NR rows
 * at a time (then one at a time), the lanes kept in `lanes` between slices. */
template <template <int, int, int> class Tile, int MT, int NR, int Seg>
void group_chunked(const GemvProblem& p, int64_t m0, int64_t first, int64_t last, int64_t slice, float* lanes,
                   float* sums) {
  for (int64_t k0 = 0; k0 < p.K; k0 += slice) {
    const int64_t k1 = k0 + slice < p.K ? k0 + slice : p.K;
    const bool first_slice = k0 == 0, last_slice = k1 == p.K;
    int64_t j = first;
    for (; j + NR <= last; j += NR) {
      float tile[MT * NR];
      float* mine = lanes + (j - first) * MT * kGemvLanes;
      Tile<MT, NR, Seg>::run(p, m0, j, k0, k1, first_slice, last_slice, mine, tile);
      if (last_slice)
        for (int m = 0; m < MT; ++m)
          for (int r = 0; r < NR; ++r) sums[(m0 + m) * p.N + j + r] = tile[m * NR + r];
    }
    for (; j < last; ++j) {
      float tile[MT];
      float* mine = lanes + (j - first) * MT * kGemvLanes;
      Tile<MT, 1, Seg>::run(p, m0, j, k0, k1, first_slice, last_slice, mine, tile);
      if (last_slice)
        for (int m = 0; m < MT; ++m) sums[(m0 + m) * p.N + j] = tile[m];
    }
  }
}

/* The segment walk for the problem's block size (see kPerChunk), then group_chunked. */
template <template <int, int, int> class Tile, int MT, int NR>
void rows_chunked(const GemvProblem& p, int64_t m0, int64_t first, int64_t last, float* lanes, float* sums) {
  const int64_t block = int64_t{1} << p.log2_bs;
  if (p.K % block != 0) {
    group_chunked<Tile, MT, NR, kPerChunk>(p, m0, first, last, slice_length(MT, p.K, kGemvLanes), lanes, sums);
    return;
  }
  const int64_t slice = slice_length(MT, p.K, block <= p.K ? block : kGemvLanes);
  if (block == 2 * kGemvLanes && slice % block == 0) {
    group_chunked<Tile, MT, NR, 2>(p, m0, first, last, slice, lanes, sums);
  } else if (block == 4 * kGemvLanes && slice % block == 0) {
    group_chunked<Tile, MT, NR, 4>(p, m0, first, last, slice, lanes, sums);
  } else {
    group_chunked<Tile, MT, NR, kPerBlock>(p, m0, first, last, slice, lanes, sums);
  }
}

/* sums[m * N + j] for every row m of A and weight row j in [first, last): groups of kGroupRows weight rows, and
 * for each group A's rows 8 at a time, then the rest in one tile (the group's packed rows stay in cache between
 * these passes, so the weight is read from memory once); the tile shapes keep 8 to 16 sums in registers. */
void gemv_chunked_avx512(const GemvProblem& p, int64_t first, int64_t last, float* sums) {
  LineBuffer lanes(static_cast<size_t>(kGroupRows * 8 * kGemvLanes));
  float* l = lanes.data();
  for (int64_t g = first; g < last; g += kGroupRows) {
    const int64_t end = g + kGroupRows < last ? g + kGroupRows : last;
    int64_t m0 = 0;
    for (; m0 + 8 <= p.M; m0 += 8) rows_chunked<Avx512Tile, 8, 1>(p, m0, g, end, l, sums);
    switch (p.M - m0) {
      case 1: rows_chunked<Avx512Tile, 1, 4>(p, m0, g, end, l, sums); break;
      case 2: rows_chunked<Avx512Tile, 2, 4>(p, m0, g, end, l, sums); break;
      case 3: rows_chunked<Avx512Tile, 3, 2>(p, m0, g, end, l, sums); break;
      case 4: rows_chunked<Avx512Tile, 4, 2>(p, m0, g, end, l, sums); break;
      case 5: rows_chunked<Avx512Tile, 5, 1>(p, m0, g, end, l, sums); break;
      case 6: rows_chunked<Avx512Tile, 6, 1>(p, m0, g, end, l, sums); break;
      case 7: rows_chunked<Avx512Tile, 7, 1>(p, m0, g, end, l, sums); break;
      default: break;
    }
  }
}

// ------------------------------------------------------------------------------------------ AVX2 tiles

/* The AVX2 decode (for K a multiple of 32). vpermps has 8 entries, so a 16-value lookup in floats costs two of them
 * and a blend per 8 codes; byte shuffles (vpshufb, 16 entries) are cheaper. The 16 table values are held as four
 * byte planes (plane b: byte b of table[c], c = 0..15, in both 128-bit lanes); a chunk's 16 bytes, their low nibbles
 * in one lane and their high nibbles in the other, index all four planes, and two rounds of byte and word
 * unpacking put each value's four bytes back together. The result is table[c] exactly; times the block's absmax,
 * in float32, it is dequantize_4bit_value's product (a non-finite absmax is replaced by the canonical NaN, which
 * x86 multiplication passes on unchanged). The planes do not depend on the block, so they are built once per
 * call (GemvProblem::planes). Register h = 0..3 of a chunk holds bytes j = 4h .. 4h + 3: its low lane their odd
 * elements 2j + 1, its high lane their even elements 2j; prepare_a stores A's chunks in this order too. */
struct Planes {
  __m256i b[4];
};

KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE Planes table_planes_avx2(const GemvProblem& p) {
  Planes t;
  for (int b = 0; b < 4; ++b)
    t.b[b] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.planes[b])));
  return t;
}

/* The scale of the block holding flat index f: absmax, or the canonical NaN for a non-finite absmax. */
KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE __m256 block_scale_avx2(const GemvProblem& p, int64_t f) {
  const float scale = p.absmax[f >> p.log2_bs];
  return _mm256_set1_ps(is_finite_scale(scale) ? scale : canonical_nan());
}

/* The 32 weights of the chunk at src (16 bytes), scaled, in the register order above. */
KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE void decode_chunk_avx2(const uint8_t* src, const Planes& t, __m256 scale,
                                                           __m256* w) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                                       _mm256_set1_epi8(15));  // low lane: low nibbles; high lane: high nibbles
  const __m256i p0 = _mm256_shuffle_epi8(t.b[0], idx), p1 = _mm256_shuffle_epi8(t.b[1], idx);
  const __m256i p2 = _mm256_shuffle_epi8(t.b[2], idx), p3 = _mm256_shuffle_epi8(t.b[3], idx);
  const __m256i l01 = _mm256_unpacklo_epi8(p0, p1), h01 = _mm256_unpackhi_epi8(p0, p1);  // bytes j 0..7, 8..15
  const __m256i l23 = _mm256_unpacklo_epi8(p2, p3), h23 = _mm256_unpackhi_epi8(p2, p3);
  w[0] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23)), scale);
  w[1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23)), scale);
  w[2] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23)), scale);
  w[3] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23)), scale);
}

/* blockwise4.h's lane tree on the four registers of one sum (register order above): + 16 is register h + 2,
 * + 8 register h + 1, + 4 and + 2 are positions within a 128-bit lane, + 1 is the even lane plus the odd one. */
KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE float lane_tree_avx2(__m256 r0, __m256 r1, __m256 r2, __m256 r3) {
  const __m256 s = _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3));
  const __m256 t = _mm256_add_ps(s, _mm256_permute_ps(s, 0xee));
  const __m256 u = _mm256_add_ps(t, _mm256_permute_ps(t, 0x55));
  return _mm_cvtss_f32(_mm_add_ss(_mm256_extractf128_ps(u, 1), _mm256_castps256_ps128(u)));
}

/* One chunk of NR weight rows at k (their block scales), decoded in registers, times MT rows of A. */
template <int MT, int NR>
KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE void chunk_avx2(const uint8_t* const* rows, int64_t ahead, int64_t k,
                                                    const Planes& t, const __m256* scale, const float* a,
                                                    __m256 (*acc)[NR][4]) {
  for (int r = 0; r < NR; ++r) {
    if ((k & 127) == 0)  // once per 64-byte line of the row
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + ahead + (k >> 1)), _MM_HINT_T1);
    __m256 w[4];
    decode_chunk_avx2(rows[r] + (k >> 1), t, scale[r], w);
    for (int h = 0; h < 4; ++h)
      for (int m = 0; m < MT; ++m)
        acc[m][r][h] = _mm256_fmadd_ps(_mm256_loadu_ps(a + m * kGemvLanes + 8 * h), w[h], acc[m][r][h]);
  }
}

/* tile_chunked_avx512's contract with AVX2 registers: MT rows of A times NR weight rows over k in [k0, k1). */
template <int MT, int NR, int Seg>
KBIT_TARGET_AVX2 void tile_chunked_avx2(const GemvProblem& p, int64_t m0, int64_t j0, int64_t k0, int64_t k1,
                                        bool first, bool last, float* lanes, float* sums) {
  const int64_t K = p.K;
  const Planes t = table_planes_avx2(p);
  TileStart<NR> start = tile_start<NR>(p, m0, j0, k0);
  const float* a = start.a;
  const int64_t a_step = start.a_step, ahead = start.ahead;
  const uint8_t* const* rows = start.rows;
  __m256 acc[MT][NR][4];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < NR; ++r)
      for (int h = 0; h < 4; ++h)
        acc[m][r][h] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(lanes + (m * NR + r) * kGemvLanes + 8 * h);
  __m256 v[NR];
  if constexpr (Seg >= 2) {
    for (int64_t k = k0; k < k1; k += Seg * kGemvLanes) {
      for (int r = 0; r < NR; ++r) v[r] = block_scale_avx2(p, (j0 + r) * K + k);
      for (int c = 0; c < Seg; ++c, a += a_step) chunk_avx2<MT, NR>(rows, ahead, k + c * kGemvLanes, t, v, a, acc);
    }
  } else {
    const int64_t block = int64_t{1} << p.log2_bs;
    for (int64_t k = k0; k < k1;) {
      const int64_t stop = Seg == kPerBlock ? ((k | (block - 1)) + 1 < k1 ? (k | (block - 1)) + 1 : k1)
                                            : k + kGemvLanes;
      for (int r = 0; r < NR; ++r) v[r] = block_scale_avx2(p, (j0 + r) * K + k);
      for (; k < stop; k += kGemvLanes, a += a_step) chunk_avx2<MT, NR>(rows, ahead, k, t, v, a, acc);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < NR; ++r) {
      float* mine = lanes + (m * NR + r) * kGemvLanes;
      if (!last) {
        for (int h = 0; h < 4; ++h) _mm256_storeu_ps(mine + 8 * h, acc[m][r][h]);
        continue;
      }
      sums[m * NR + r] = lane_tree_avx2(acc[m][r][0], acc[m][r][1], acc[m][r][2], acc[m][r][3]);
    }
}

template <int MT, int NR, int Seg>
struct Avx2Tile {
  static void run(const GemvProblem& p, int64_t m0, int64_t j0, int64_t k0, int64_t k1, bool first, bool last,
                  float* lanes, float* sums) {
    tile_chunked_avx2<MT, NR, Seg>(p, m0, j0, k0, k1, first, last, lanes, sums);
  }
};

/* Weight row j's chunks [k0, k1) decoded and scaled into w (the register order above). */
KBIT_TARGET_AVX2 void decode_chunks_avx2(const GemvProblem& p, const Planes& t, int64_t j, int64_t k0, int64_t k1,
                                         float* w) {
  const uint8_t* row = p.packed + ((j * p.K) >> 1);
  const int64_t ahead = kGroupRows * (p.K / 2);
  for (int64_t k = k0; k < k1; k += kGemvLanes, w += kGemvLanes) {
    if ((k & 127) == 0) _mm_prefetch(reinterpret_cast<const char*>(row + ahead + (k >> 1)), _MM_HINT_T1);
    __m256 r[4];
    decode_chunk_avx2(row + (k >> 1), t, block_scale_avx2(p, j * p.K + k), r);
    for (int h = 0; h < 4; ++h) _mm256_storeu_ps(w + 8 * h, r[h]);
  }
}

/* MT rows of A (chunked: a_step floats from one chunk to the next) times NR weight rows decoded at w[r] (`chunks`
 * chunks each). The four registers of a sum are independent lanes until the tree, so they are taken one at a time
 * (register h over every chunk, then h + 1): MT * NR sums in registers, each load of A serving NR weight rows.
 * The lanes of (row m, weight row r) are lanes[(r * 8 + m) * 32 ..]: zero first (first slice) or loaded, stored
 * again, and on the last slice summed by the tree into sums[r * 8 + m]. */
template <int MT, int NR>
KBIT_TARGET_AVX2 void dots_chunked_avx2(const float* const* w, int64_t chunks, const float* a, int64_t a_step,
                                        bool first, bool last, float* lanes, float* sums) {
  for (int h = 0; h < 4; ++h) {
    __m256 acc[MT][NR];
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < NR; ++r)
        acc[m][r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(lanes + (r * 8 + m) * kGemvLanes + 8 * h);
    const float* ac = a + 8 * h;
    for (int64_t c = 0; c < chunks; ++c, ac += a_step) {
      __m256 wr[NR];
      for (int r = 0; r < NR; ++r) wr[r] = _mm256_loadu_ps(w[r] + c * kGemvLanes + 8 * h);
      for (int m = 0; m < MT; ++m) {
        __m256 am = _mm256_loadu_ps(ac + m * kGemvLanes);
        KBIT_IN_REGISTER(am);  // one load for the NR multiply-adds (measured: 15 % faster at batch 8)
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(am, wr[r], acc[m][r]);
      }
    }
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < NR; ++r) _mm256_storeu_ps(lanes + (r * 8 + m) * kGemvLanes + 8 * h, acc[m][r]);
  }
  if (!last) return;
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < NR; ++r) {
      const float* l = lanes + (r * 8 + m) * kGemvLanes;
      sums[r * 8 + m] = lane_tree_avx2(_mm256_loadu_ps(l), _mm256_loadu_ps(l + 8), _mm256_loadu_ps(l + 16),
                                       _mm256_loadu_ps(l + 24));
    }
}

/* dots_chunked_avx2 for `rows` (<= 8) rows of A, 4 at a time. */
template <int NR>
KBIT_TARGET_AVX2 void dots_rows_avx2(const float* const* w, int64_t chunks, const float* a, int64_t a_step,
                                     int64_t rows, bool first, bool last, float* lanes, float* sums) {
  for (int64_t m = 0; m < rows; m += 4) {
    float* l = lanes + m * kGemvLanes;
    const float* am = a + m * kGemvLanes;
    switch (rows - m < 4 ? rows - m : 4) {
      case 1: dots_chunked_avx2<1, NR>(w, chunks, am, a_step, first, last, l, sums + m); break;
      case 2: dots_chunked_avx2<2, NR>(w, chunks, am, a_step, first, last, l, sums + m); break;
      case 3: dots_chunked_avx2<3, NR>(w, chunks, am, a_step, first, last, l, sums + m); break;
      default: dots_chunked_avx2<4, NR>(w, chunks, am, a_step, first, last, l, sums + m); break;
    }
  }
}

/* A's rows [m0, m0 + rows) (rows <= 8) times weight rows [first, last), for batches whose in-register tiles would
 * not fit AVX2's 16 registers (four per sum): slice by slice (A's slice stays in L1), two weight rows' slices are
 * decoded once into L1 buffers and then multiplied by A's rows, 4 at a time. */
KBIT_TARGET_AVX2 void rows_buffered_avx2(const GemvProblem& p, int64_t m0, int64_t rows, int64_t first, int64_t last,
                                         float* lanes, float* sums) {
  const Planes t = table_planes_avx2(p);
  const int64_t slice = slice_length(rows, p.K, kGemvLanes);  // <= 4096 / rows floats, or K when A's rows fit
  LineBuffer buffer(static_cast<size_t>(2 * slice));
  const float* w[2] = {buffer.data(), buffer.data() + slice};
  for (int64_t k0 = 0; k0 < p.K; k0 += slice) {
    const int64_t k1 = k0 + slice < p.K ? k0 + slice : p.K, chunks = (k1 - k0) / kGemvLanes;
    const bool first_slice = k0 == 0, last_slice = k1 == p.K;
    const float* a = p.a + ((k0 / kGemvLanes) * p.M + m0) * kGemvLanes;
    for (int64_t j = first; j < last; j += 2) {
      const int64_t pair = last - j >= 2 ? 2 : 1;
      float tile[16];
      float* mine = lanes + (j - first) * 8 * kGemvLanes;  // weight row j + r: lanes[((j - first + r) * 8 + m) * 32]
      for (int64_t r = 0; r < pair; ++r) decode_chunks_avx2(p, t, j + r, k0, k1, buffer.data() + r * slice);
      if (pair == 2) {
        dots_rows_avx2<2>(w, chunks, a, p.M * kGemvLanes, rows, first_slice, last_slice, mine, tile);
      } else {
        dots_rows_avx2<1>(w, chunks, a, p.M * kGemvLanes, rows, first_slice, last_slice, mine, tile);
      }
      if (last_slice)
        for (int64_t r = 0; r < pair; ++r)
          for (int64_t m = 0; m < rows; ++m) sums[(m0 + m) * p.N + j + r] = tile[r * 8 + m];
    }
  }
}

/* From this many rows of A on, the AVX2 copy multiplies through the decode buffer (rows_buffered_avx2); fewer go
 * to the in-register tiles. Measured on a stack of 4096x4096 layers (AMD Zen 3, 2 threads): 2 rows 1.20-1.25 ms in
 * registers against 1.76-1.85 buffered, 4 rows 2.42-2.49 against 2.01-2.19; 3 rows within noise. */
constexpr int64_t kBufferedRows = 3;

/* gemv_chunked_avx512's job with the AVX2 tiles: A's rows 8 at a time through the decode buffer, and a rest of 1
 * or 2 rows in an in-register tile. */
void gemv_chunked_avx2(const GemvProblem& p, int64_t first, int64_t last, float* sums) {
  LineBuffer lanes(static_cast<size_t>(kGroupRows * 8 * kGemvLanes));
  float* l = lanes.data();
  for (int64_t g = first; g < last; g += kGroupRows) {
    const int64_t end = g + kGroupRows < last ? g + kGroupRows : last;
    int64_t m0 = 0;
    while (p.M - m0 >= kBufferedRows) {
      const int64_t rows = p.M - m0 < 8 ? p.M - m0 : 8;
      rows_buffered_avx2(p, m0, rows, g, end, l, sums);
      m0 += rows;
    }
    if (p.M - m0 == 2) {
      rows_chunked<Avx2Tile, 2, 1>(p, m0, g, end, l, sums);
    } else if (p.M - m0 == 1) {
      rows_chunked<Avx2Tile, 1, 1>(p, m0, g, end, l, sums);
    }
  }
}
#endif

// ------------------------------------------------------------------------------------------ the loop

using DecodeFn = void (*)(const uint8_t*, const float*, int64_t, int64_t, int32_t, const float*, float*);
using DotsFn = void (*)(const float*, int64_t, int64_t, const float*, float*);

/* The row-by-row copies: decode a weight row (decode(packed, absmax, first, count, ...): elements [first, first +
 * count) of the flat tensor) into a buffer, then every row of A against it. */
struct RowKernels {
  DecodeFn decode;
  DotsFn dots;
};

RowKernels row_kernels() {
#if KBIT_X86_DISPATCH
  if (use_avx512()) return {&decode_row_avx512, &dots_avx512};
  if (use_avx2()) return {&decode_row_avx2, &dots_avx2};
#endif
  return {&decode_row_base, &dots_base};
}

/* Whether the fused AVX-512 or AVX2 tiles serve in_features K (they need whole chunks of 32 in every row). */
bool use_chunked(int64_t K) {
#if KBIT_X86_DISPATCH
  return use_avx2() && K % kGemvLanes == 0;
#else
  (void)K;
  return false;
#endif
}

/* A as float32 (widening is exact, so converting once changes no result): row-major, or chunked (K a multiple of
 * 32): chunk c of row m at ((c * M) + m) * 32, so that a tile's rows of A for one chunk are contiguous, in the
 * register order of the lanes: for AVX-512 its 16 even elements, then its 16 odd ones; for AVX2 (avx2_order), for
 * each group of 4 bytes j = 4h .. 4h + 3, their odd elements 2j + 1, then their even ones 2j. Returns A itself
 * when nothing changes. */
template <class T>
const float* prepare_a(const T* A, int64_t M, int64_t K, bool chunked, bool avx2_order,
                       LineBuffer& buffer) {
  if (!chunked && sizeof(T) == sizeof(float)) return reinterpret_cast<const float*>(A);
  buffer.resize(static_cast<size_t>(M * K));
  float* a = buffer.data();
  if (!chunked) {
    for (int64_t i = 0; i < M * K; ++i) a[i] = to_float(A[i]);
    return a;
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; k += kGemvLanes) {
      const T* src = A + m * K + k;
      float* dst = a + ((k / kGemvLanes) * M + m) * kGemvLanes;
      if (avx2_order) {
        for (int64_t h = 0; h < 4; ++h)
          for (int64_t i = 0; i < 4; ++i) {
            const int64_t j = 4 * h + i;
            dst[8 * h + i] = to_float(src[2 * j + 1]);
            dst[8 * h + 4 + i] = to_float(src[2 * j]);
          }
        continue;
      }
      for (int64_t l = 0; l < 16; ++l) {
        dst[l] = to_float(src[2 * l]);
        dst[16 + l] = to_float(src[2 * l + 1]);
      }
    }
  return a;
}

/* out[m, j] = sums[m * stride + j - first] for j in [first, last) and every m: the bias added once, rounded to T. */
template <class T>
void write_outputs(const float* sums, int64_t stride, const T* bias, T* out, int64_t M, int64_t N, int64_t first,
                   int64_t last) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = first; j < last; ++j) {
      const float b = bias != nullptr ? to_float(bias[j]) : 0.0f;
      out[m * N + j] = from_float<T>(gemv_finish(sums[m * stride + j - first], bias != nullptr, b));
    }
}

template <class T>
void gemv(const T* A, const uint8_t* packed, const float* absmax, const T* bias, T* out, int64_t M, int64_t N,
          int64_t K, int32_t bs, const float* table, int32_t threads) {
  const bool chunked = use_chunked(K);
  LineBuffer a_buffer;
  std::vector<float> sums(static_cast<size_t>(chunked ? M * N : 0));
#if KBIT_X86_DISPATCH
  const bool avx2_order = chunked && !use_avx512();
#else
  const bool avx2_order = false;
#endif
  const float* a = prepare_a(A, M, K, chunked, avx2_order, a_buffer);
  GemvProblem p{a, packed, absmax, table, M, N, K, log2_pow2(bs), {}};
  fill_byte_planes(table, p.planes);
  const RowKernels kernels = row_kernels();
  // work counted as multiply-adds (cheaper than a quantized element: the count errs towards starting threads)
  parallel_ranges(N, team_for(M * N * K, threads), [&](int64_t first, int64_t last) {
#if KBIT_X86_DISPATCH
    if (chunked) {
      if (use_avx512()) {
        gemv_chunked_avx512(p, first, last, sums.data());
      } else {
        gemv_chunked_avx2(p, first, last, sums.data());
      }
      write_outputs(sums.data() + first, N, bias, out, M, N, first, last);
      return;
    }
#endif
    LineBuffer w(static_cast<size_t>(p.K > 0 ? p.K : 1));
    std::vector<float> row_sums(static_cast<size_t>(p.M));
    for (int64_t j = first; j < last; ++j) {
      kernels.decode(p.packed, p.absmax, j * p.K, p.K, p.log2_bs, p.table, w.data());
      kernels.dots(p.a, p.M, p.K, w.data(), row_sums.data());
      write_outputs(row_sums.data(), 1, bias, out, M, N, j, j + 1);
    }
  });
}

// ------------------------------------------------------------------------------------------ the transposed product

/* gemv_4bit_t, out = G @ W (blockwise4.h's transposed order): every output out[m, k] is one sum over 32 chunks of
 * weight rows, so a thread owns a range of columns k (whole outputs: the bits do not depend on the split). For
 * kTBatch rows of G at a time (AVX2: 2, in registers), each chunk's sums start at zero and take the chunk's weight
 * rows in increasing n, one fused step each; then they go into the running total `sums` (M x K, float32): the first
 * chunk's sums are the total, each later one is added to it. The same GemvProblem as gemv, with `a` = G (M x N,
 * float32) and N the weight's rows. */
constexpr int64_t kTBatch = 8;    // rows of G per pass over the weight (row path and AVX-512)
constexpr int64_t kTSlice = 256;  // columns per slice of the row path (its decode buffer and sums stay in L1)
constexpr int64_t kTGroup = 128;  // columns per group of the chunked paths: one 64-byte line of every weight row
constexpr int64_t kTAhead = 16;   // weight rows a chunked path prefetches ahead

/* The weight rows of chunk c: [n0, n1). */
struct RowChunk {
  int64_t n0, n1;
};

inline RowChunk row_chunk(int64_t N, int c) {
  const int64_t S = gemv_t_chunk_rows(N), n0 = c * S < N ? c * S : N;
  return RowChunk{n0, n0 + S < N ? n0 + S : N};
}

/* A chunk's sums into the total: rows x len values of acc (row stride acc_stride; position i holds column order[i],
 * or column i when order is NULL) to sums[m * K + column] (sums starts at the first column of the first row). Plain
 * float32 additions. */
void add_chunk(const float* acc, int64_t acc_stride, const int8_t* order, int64_t rows, int64_t len, bool first,
               float* sums, int64_t K) {
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t i = 0; i < len; ++i) {
      const float v = acc[m * acc_stride + i];
      float& total = sums[m * K + (order != nullptr ? order[i] : i)];
      total = first ? v : total + v;
    }
}

/* acc[i] = fma(g, w[i], acc[i]) for i in [0, n): one weight row's decoded values times one value of G. */
using AxpyFn = void (*)(float g, const float* w, int64_t n, float* acc);

void axpy_base(float g, const float* w, int64_t n, float* acc) {
  for (int64_t i = 0; i < n; ++i) acc[i] = gemv_step(acc[i], g, w[i]);
}

#if KBIT_X86_DISPATCH
KBIT_TARGET_AVX2 void axpy_avx2(float g, const float* w, int64_t n, float* acc) {
  const __m256 gv = _mm256_set1_ps(g);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(gv, _mm256_loadu_ps(w + i), _mm256_loadu_ps(acc + i)));
  for (; i < n; ++i) acc[i] = gemv_step(acc[i], g, w[i]);
}

KBIT_TARGET_AVX512 void axpy_avx512(float g, const float* w, int64_t n, float* acc) {
  const __m512 gv = _mm512_set1_ps(g);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(gv, _mm512_loadu_ps(w + i), _mm512_loadu_ps(acc + i)));
  for (; i < n; ++i) acc[i] = gemv_step(acc[i], g, w[i]);
}
#endif

AxpyFn axpy_kernel() {
#if KBIT_X86_DISPATCH
  if (use_avx512()) return &axpy_avx512;
  if (use_avx2()) return &axpy_avx2;
#endif
  return &axpy_base;
}

/* Columns [c0, c1) for any K and instruction set: each weight row's slice is decoded into an L1 buffer, then every
 * row of G's pass takes it in one axpy. */
void gemv_t_rows(const GemvProblem& p, int64_t c0, int64_t c1, float* sums) {
  const DecodeFn decode = row_kernels().decode;
  const AxpyFn axpy = axpy_kernel();
  LineBuffer w_buffer(static_cast<size_t>(kTSlice)), acc_buffer(static_cast<size_t>(kTBatch * kTSlice));
  float* w = w_buffer.data();
  float* acc = acc_buffer.data();
  for (int64_t m0 = 0; m0 < p.M; m0 += kTBatch) {
    const int64_t rows = p.M - m0 < kTBatch ? p.M - m0 : kTBatch;
    for (int64_t k0 = c0; k0 < c1; k0 += kTSlice) {
      const int64_t len = c1 - k0 < kTSlice ? c1 - k0 : kTSlice;
      for (int c = 0; c < kGemvTChunks; ++c) {
        const RowChunk rc = row_chunk(p.N, c);
        for (int64_t i = 0; i < rows * kTSlice; ++i) acc[i] = 0.0f;
        for (int64_t n = rc.n0; n < rc.n1; ++n) {
          decode(p.packed, p.absmax, n * p.K + k0, len, p.log2_bs, p.table, w);
          for (int64_t m = 0; m < rows; ++m) axpy(p.a[(m0 + m) * p.N + n], w, len, acc + m * kTSlice);
        }
        add_chunk(acc, kTSlice, nullptr, rows, len, c == 0, sums + m0 * p.K + k0, p.K);
      }
    }
  }
}

#if KBIT_X86_DISPATCH
/* The chunked paths (K a multiple of 32): the 32 columns at k of a chunk's weight rows [n0, n1) are decoded in
 * registers (decode_chunk_avx2 / the AVX-512 permutes of tile_chunked_avx512), MT rows of G in registers; `lanes`
 * receives the MT x 32 sums in the register order, whose column offsets are kAvx2Order / kAvx512Order. */
constexpr int8_t kAvx2Order[32] = {1,  3,  5,  7,  0,  2,  4,  6,  9,  11, 13, 15, 8,  10, 12, 14,
                                   17, 19, 21, 23, 16, 18, 20, 22, 25, 27, 29, 31, 24, 26, 28, 30};
constexpr int8_t kAvx512Order[32] = {0, 2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                     1, 3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

template <int MT>
KBIT_TARGET_AVX2 KBIT_ALWAYS_INLINE void cols_avx2(const GemvProblem& p, int64_t m0, int64_t k, RowChunk rc,
                                                   float* lanes) {
  const Planes t = table_planes_avx2(p);
  __m256 acc[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < 4; ++h) acc[m][h] = _mm256_setzero_ps();
  const float* g = p.a + m0 * p.N;
  const int64_t stride = p.K / 2;
  const uint8_t* src = p.packed + ((rc.n0 * p.K + k) >> 1);
  for (int64_t n = rc.n0; n < rc.n1; ++n, src += stride) {
    _mm_prefetch(reinterpret_cast<const char*>(src + kTAhead * stride), _MM_HINT_T0);
    __m256 w[4];
    decode_chunk_avx2(src, t, block_scale_avx2(p, n * p.K + k), w);
    for (int m = 0; m < MT; ++m) {
      const __m256 gv = _mm256_broadcast_ss(g + m * p.N + n);
      for (int h = 0; h < 4; ++h) acc[m][h] = _mm256_fmadd_ps(gv, w[h], acc[m][h]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < 4; ++h) _mm256_storeu_ps(lanes + m * kGemvLanes + 8 * h, acc[m][h]);
}

KBIT_TARGET_AVX2 void gemv_t_cols_avx2(const GemvProblem& p, int64_t mt, int64_t m0, int64_t k, RowChunk rc,
                                       float* lanes) {
  if (mt == 2) {
    cols_avx2<2>(p, m0, k, rc, lanes);
  } else {
    cols_avx2<1>(p, m0, k, rc, lanes);
  }
}

template <int MT>
KBIT_TARGET_AVX512 KBIT_ALWAYS_INLINE void cols_avx512(const GemvProblem& p, int64_t m0, int64_t k, RowChunk rc,
                                                       float* lanes) {
  const __m512 values = _mm512_loadu_ps(p.table);
  __m512 acc[MT][2];
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  const float* g = p.a + m0 * p.N;
  const int64_t stride = p.K / 2;
  const uint8_t* src = p.packed + ((rc.n0 * p.K + k) >> 1);
  for (int64_t n = rc.n0; n < rc.n1; ++n, src += stride) {
    const __m512 v = block_values_avx512(p, values, n * p.K + k);
    const __m512i odd = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    const __m512 w0 = _mm512_permutexvar_ps(_mm512_srli_epi32(odd, 4), v), w1 = _mm512_permutexvar_ps(odd, v);
    for (int m = 0; m < MT; ++m) {
      const __m512 gv = _mm512_set1_ps(g[m * p.N + n]);
      acc[m][0] = _mm512_fmadd_ps(gv, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(gv, w1, acc[m][1]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    _mm512_storeu_ps(lanes + m * kGemvLanes, acc[m][0]);
    _mm512_storeu_ps(lanes + m * kGemvLanes + 16, acc[m][1]);
  }
}

KBIT_TARGET_AVX512 void gemv_t_cols_avx512(const GemvProblem& p, int64_t mt, int64_t m0, int64_t k, RowChunk rc,
                                           float* lanes) {
  switch (mt) {
    case 1: cols_avx512<1>(p, m0, k, rc, lanes); break;
    case 2: cols_avx512<2>(p, m0, k, rc, lanes); break;
    case 3: cols_avx512<3>(p, m0, k, rc, lanes); break;
    case 4: cols_avx512<4>(p, m0, k, rc, lanes); break;
    case 5: cols_avx512<5>(p, m0, k, rc, lanes); break;
    case 6: cols_avx512<6>(p, m0, k, rc, lanes); break;
    case 7: cols_avx512<7>(p, m0, k, rc, lanes); break;
    default: cols_avx512<8>(p, m0, k, rc, lanes); break;
  }
}

/* Columns [c0, c1) (multiples of 32) through an instruction set's column kernel: for each pass of up to max_mt rows
 * of G and each group of kTGroup columns, chunk by chunk, the group's 32-column pieces one after the other (a
 * chunk's weight rows are read from memory by the first piece and from L1 by the others). */
using ColsFn = void (*)(const GemvProblem&, int64_t, int64_t, int64_t, RowChunk, float*);

void gemv_t_chunked(const GemvProblem& p, ColsFn cols, int64_t max_mt, const int8_t* order, int64_t c0, int64_t c1,
                    float* sums) {
  LineBuffer lanes_buffer(static_cast<size_t>(kTBatch * kGemvLanes));
  float* lanes = lanes_buffer.data();
  for (int64_t m0 = 0; m0 < p.M; m0 += max_mt) {
    const int64_t mt = p.M - m0 < max_mt ? p.M - m0 : max_mt;
    for (int64_t g0 = c0; g0 < c1; g0 += kTGroup) {
      const int64_t g1 = g0 + kTGroup < c1 ? g0 + kTGroup : c1;
      for (int c = 0; c < kGemvTChunks; ++c) {
        const RowChunk rc = row_chunk(p.N, c);
        for (int64_t k = g0; k < g1; k += kGemvLanes) {
          cols(p, mt, m0, k, rc, lanes);
          add_chunk(lanes, kGemvLanes, order, mt, kGemvLanes, c == 0, sums + m0 * p.K + k, p.K);
        }
      }
    }
  }
}
#endif

template <class T>
void gemv_t(const T* G, const uint8_t* packed, const float* absmax, T* out, int64_t M, int64_t N, int64_t K,
            int32_t bs, const float* table, int32_t threads) {
  LineBuffer g_buffer;
  const float* g = prepare_a(G, M, N, false, false, g_buffer);  // row-major float32
  GemvProblem p{g, packed, absmax, table, M, N, K, log2_pow2(bs), {}};
  fill_byte_planes(table, p.planes);
  std::vector<float> sums(static_cast<size_t>(M * K));
  const bool chunked = use_chunked(K);
  const int64_t units = (K + kGemvLanes - 1) / kGemvLanes;  // threads take whole 32-column pieces
  parallel_ranges(units, team_for(M * N * K, threads), [&](int64_t u0, int64_t u1) {
    const int64_t c0 = u0 * kGemvLanes, c1 = u1 * kGemvLanes < K ? u1 * kGemvLanes : K;
#if KBIT_X86_DISPATCH
    if (chunked) {
      if (use_avx512()) {
        gemv_t_chunked(p, &gemv_t_cols_avx512, kTBatch, kAvx512Order, c0, c1, sums.data());
      } else {
        gemv_t_chunked(p, &gemv_t_cols_avx2, 2, kAvx2Order, c0, c1, sums.data());
      }
    } else {
      gemv_t_rows(p, c0, c1, sums.data());
    }
#else
    (void)chunked;
    gemv_t_rows(p, c0, c1, sums.data());
#endif
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = c0; k < c1; ++k) out[m * K + k] = from_float<T>(sums[m * K + k]);
  });
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_gemv_4bit(int32_t dtype, int32_t quant_type, const void* A, const uint8_t* packed,
                            const float* absmax, const void* bias, void* out, int64_t rows, int64_t out_features,
                            int64_t in_features, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_gemv_4bit", [&]() -> int {
    if (int s = kbit::check_gemv_4bit(dtype, quant_type, A, packed, absmax, out, rows, out_features, in_features,
                                      blocksize))
      return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (rows == 0 || out_features == 0) return KBIT_OK;
    const float* table = quant_type == KBIT_FP4 ? kbit::kFp4Values : kbit::kNf4Values;
    const int64_t M = rows, N = out_features, K = in_features;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::gemv(static_cast<const T*>(A), packed, absmax, static_cast<const T*>(bias), static_cast<T*>(out), M, N, K,
                 blocksize, table, num_threads);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_gemv_4bit_t(int32_t dtype, int32_t quant_type, const void* G, const uint8_t* packed,
                              const float* absmax, void* out, int64_t rows, int64_t out_features, int64_t in_features,
                              int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_gemv_4bit_t", [&]() -> int {
    if (int s = kbit::check_gemv_4bit_t(dtype, quant_type, G, packed, absmax, out, rows, out_features, in_features,
                                        blocksize))
      return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (rows == 0 || in_features == 0) return KBIT_OK;
    const float* table = quant_type == KBIT_FP4 ? kbit::kFp4Values : kbit::kNf4Values;
    const int64_t M = rows, N = out_features, K = in_features;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::gemv_t(static_cast<const T*>(G), packed, absmax, static_cast<T*>(out), M, N, K, blocksize, table,
                   num_threads);
      return KBIT_OK;
    });
  });
}

}  // extern "C"
