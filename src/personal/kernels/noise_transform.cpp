// The Gaussian transform of personal.privacy.noise in one vectorised pass (float64).
//
// Why: numpy evaluates float64 cos and sin element by element through libm (~14 ns each here),
// and a DP step on SmolLM2 draws 2.4 M noise values, each the sum of four Box-Muller normals:
// ~10 M uniforms, ~5 M log/sqrt and ~10 M cos/sin, 0.2 s on one core (docs/performance.md).
// Here the same arithmetic runs in SIMD lanes with glibc's vector maths library (libmvec,
// documented maximum error 4 ulp in double precision), about 15x faster.
//
// The randomness is not made here: the words come from AES-256-CTR in noise.py (cryptography /
// OpenSSL). This file only maps given words to normals, with no data-dependent control flow.
//
// This translation unit includes no C++ maths header on purpose: <cmath> hides the declarations
// below and stops GCC from vectorising. The build passes -fno-math-errno (vector maths cannot
// set errno) and -fno-builtin-sin -fno-builtin-cos (otherwise GCC fuses sin and cos of one
// angle into a scalar sincos call, which has no vector version).
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GLIBC__)
// glibc ships SIMD versions of these (libmvec, linked with -lmvec); declaring them so lets GCC
// call them from an `omp simd` loop. Elsewhere the loop stays scalar: slower, the same maths.
extern "C" {
__attribute__((__simd__("notinbranch"))) double log(double) noexcept;
__attribute__((__simd__("notinbranch"))) double sin(double) noexcept;
__attribute__((__simd__("notinbranch"))) double cos(double) noexcept;
}
#endif

namespace {

// Every value goes through the same 8-lane block, the last block padded: a value never takes a
// scalar tail path, whose libm rounding could differ from the vector one, so the result does not
// depend on how a draw is split into chunks.
constexpr int64_t kLanes = 8;

// (k + 1/2) * 2^-52 for k the word's 52 high bits, exactly as noise.uniform_open: 1 + k*2^-52
// is built in the exponent/mantissa bits, minus 1 is exact (Sterbenz), plus 2^-53 needs 53 bits.
inline double uniform_open(uint64_t word) {
  uint64_t bits = 0x3FF0000000000000ull | (word >> 12);
  double one_plus;
  memcpy(&one_plus, &bits, sizeof one_plus);
  return (one_plus - 1.0) + 0x1p-53;
}

// Value j = r0 cos t2 + r1 cos t3 + r0 sin t2 + r1 sin t3 (in that order, as noise.py's numpy
// path adds its four rows): radii from words of rows 0 and 1, angles from rows 2 and 3.
inline void block(const uint64_t* w0, const uint64_t* w1, const uint64_t* w2, const uint64_t* w3,
                  double* out) {
  const double two_pi = 2.0 * M_PI;
#pragma omp simd simdlen(kLanes)
  for (int64_t j = 0; j < kLanes; ++j) {
    double r0 = sqrt(-2.0 * log(uniform_open(w0[j])));
    double r1 = sqrt(-2.0 * log(uniform_open(w1[j])));
    double t2 = two_pi * uniform_open(w2[j]);
    double t3 = two_pi * uniform_open(w3[j]);
    out[j] = ((r0 * cos(t2) + r1 * cos(t3)) + r0 * sin(t2)) + r1 * sin(t3);
  }
}

}  // namespace

// words: 4 rows of n uint64 (row-major); out: n doubles, each a sum of four N(0, 1) values.
void personal_box_muller_sums(const uint64_t* words, double* out, int64_t n) {
  const uint64_t *w0 = words, *w1 = words + n, *w2 = words + 2 * n, *w3 = words + 3 * n;
  const int64_t full = n - n % kLanes;
  for (int64_t j = 0; j < full; j += kLanes) block(w0 + j, w1 + j, w2 + j, w3 + j, out + j);
  if (full == n) return;
  uint64_t pad[4][kLanes] = {};
  double tail[kLanes];
  const int64_t rest = n - full;
  memcpy(pad[0], w0 + full, rest * sizeof(uint64_t));
  memcpy(pad[1], w1 + full, rest * sizeof(uint64_t));
  memcpy(pad[2], w2 + full, rest * sizeof(uint64_t));
  memcpy(pad[3], w3 + full, rest * sizeof(uint64_t));
  block(pad[0], pad[1], pad[2], pad[3], tail);
  memcpy(out + full, tail, rest * sizeof(double));
}
