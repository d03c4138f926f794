/* abi_smoke.c: load one kbit library by absolute path and drive it through the C ABI only, for the cross-platform
 * smokes (ci/smoke_windows.py under wine, ci/smoke_aarch64.py under qemu-user).
 *
 * It prints one line per check; everything but the `info` line must be byte-identical to what the same program
 * prints against the native Linux x86_64 library. The function pointer types are taken from kbit.h's own
 * prototypes (__typeof__), so a `long` or other LLP64-fragile parameter in the header would change the bytes
 * that cross the boundary on Windows, and the 64-bit element counts used here (n > 65535, pointers) would not
 * survive a truncating argument. The inputs are exact (integer ratios), so no libm difference can change them.
 *
 * A CUDA library (its build info says so) is only loaded and asked for its devices: without a driver that must be
 * KBIT_ERR_NO_DRIVER with a message, never a crash.
 *
 * usage: abi_smoke LIBRARY   (exit 0 when every call returned what was expected)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kbit.h"

#if defined(_WIN32)
#include <windows.h>
typedef HMODULE lib_t;
static lib_t lib_open(const char* path) { return LoadLibraryA(path); }
static void* lib_sym(lib_t lib, const char* name) { return (void*)GetProcAddress(lib, name); }
#else
#include <dlfcn.h>
typedef void* lib_t;
static lib_t lib_open(const char* path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void* lib_sym(lib_t lib, const char* name) { return dlsym(lib, name); }
#endif

#define N 70001 /* odd (4-bit padding), > 64K (int64 count, several threads in the CPU thread team) */
#define THREADS 4

static int failures = 0;

/* FNV-1a over bytes: one printable digest per buffer, the same on every platform */
static uint64_t fnv1a(const void* data, size_t size) {
  const unsigned char* p = (const unsigned char*)data;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < size; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static void expect(int ok, const char* what) {
  if (!ok) {
    printf("FAIL %s\n", what);
    failures++;
  }
}

#define LOAD(lib, name) ((__typeof__(&name))lib_sym(lib, #name))

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s LIBRARY (an absolute path)\n", argv[0]);
    return 2;
  }
  lib_t lib = lib_open(argv[1]);
  if (!lib) {
    printf("FAIL cannot load %s\n", argv[1]);
    return 1;
  }
  __typeof__(&kbit_abi_version) abi_version = LOAD(lib, kbit_abi_version);
  __typeof__(&kbit_build_info) build_info = LOAD(lib, kbit_build_info);
  __typeof__(&kbit_last_error) last_error = LOAD(lib, kbit_last_error);
  __typeof__(&kbit_quantize_blockwise_8bit) q8 = LOAD(lib, kbit_quantize_blockwise_8bit);
  __typeof__(&kbit_dequantize_blockwise_8bit) dq8 = LOAD(lib, kbit_dequantize_blockwise_8bit);
  __typeof__(&kbit_quantize_4bit) q4 = LOAD(lib, kbit_quantize_4bit);
  __typeof__(&kbit_dequantize_4bit) dq4 = LOAD(lib, kbit_dequantize_4bit);
  __typeof__(&kbit_gemv_4bit) gemv = LOAD(lib, kbit_gemv_4bit);
  __typeof__(&kbit_gemv_4bit_t) gemv_t = LOAD(lib, kbit_gemv_4bit_t);
  if (!abi_version || !build_info || !last_error || !q8 || !dq8 || !q4 || !dq4 || !gemv || !gemv_t) {
    printf("FAIL a kbit_* symbol is missing from %s\n", argv[1]);
    return 1;
  }
  printf("abi %d\n", (int)abi_version());
  expect(abi_version() == KBIT_ABI_VERSION, "kbit_abi_version() == KBIT_ABI_VERSION of this header");
  const char* info = build_info();
  printf("info %s\n", info);
  /* a CUDA library on a machine without a driver: the handshake and a clean "no driver" status, nothing more */
  if (strstr(info, "\"cuda\"") != NULL) {
    __typeof__(&kbit_device_count) device_count = LOAD(lib, kbit_device_count);
    int32_t count = -1;
    int status = device_count ? device_count(&count) : -1;
    printf("cuda device_count status %d count %d\n", status, (int)count);
    expect(status == KBIT_ERR_NO_DRIVER && count == 0, "kbit_device_count reports KBIT_ERR_NO_DRIVER, count 0");
    expect(last_error()[0] != '\0', "the missing driver is explained by kbit_last_error");
    __typeof__(&kbit_cpu_threads) cpu_threads = LOAD(lib, kbit_cpu_threads);
    int32_t kind = -1;
    expect(cpu_threads && cpu_threads(&kind, NULL, 0) == KBIT_OK && kind == KBIT_THREADS_NONE,
           "kbit_cpu_threads: a CUDA library runs no CPU loops");
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
  }

  /* this program has no OpenMP runtime: the loops run on the library's own threads (per call on Windows) */
  __typeof__(&kbit_cpu_threads) cpu_threads = LOAD(lib, kbit_cpu_threads);
  int32_t kind = -1;
  char where[64];
  expect(cpu_threads && cpu_threads(&kind, where, (int32_t)sizeof where) == KBIT_OK && where[0] == '\0',
         "kbit_cpu_threads answers, with no OpenMP runtime file");
#if defined(_WIN32)
  expect(kind == KBIT_THREADS_PER_CALL, "kbit_cpu_threads: threads per call on Windows");
#else
  expect(kind == KBIT_THREADS_OWN_TEAM, "kbit_cpu_threads: the library's own team without OpenMP in the process");
#endif

  float* a = (float*)malloc(sizeof(float) * N);
  float* back = (float*)malloc(sizeof(float) * N);
  float* back1 = (float*)malloc(sizeof(float) * N);
  uint8_t* codes = (uint8_t*)malloc(N);
  uint8_t* codes1 = (uint8_t*)malloc(N);
  float absmax[(N + 63) / 64], absmax1[(N + 63) / 64];
  for (int64_t i = 0; i < N; i++) a[i] = (float)((i * 7919) % 2001 - 1000) / 37.0f;

  /* 8-bit blockwise round trip, THREADS threads and then 1: the same bytes */
  expect(q8(KBIT_F32, a, absmax, codes, N, 256, NULL, THREADS) == KBIT_OK, "quantize_blockwise_8bit");
  expect(q8(KBIT_F32, a, absmax1, codes1, N, 256, NULL, 1) == KBIT_OK, "quantize_blockwise_8bit, 1 thread");
  expect(memcmp(codes, codes1, N) == 0, "8-bit codes do not depend on the thread count");
  expect(dq8(KBIT_F32, codes, absmax, back, N, 256, NULL, THREADS) == KBIT_OK, "dequantize_blockwise_8bit");
  printf("q8 codes %016llx absmax %016llx\n", (unsigned long long)fnv1a(codes, N),
         (unsigned long long)fnv1a(absmax, sizeof(float) * ((N + 255) / 256)));
  printf("dq8 %016llx\n", (unsigned long long)fnv1a(back, sizeof(float) * N));

  /* 4-bit round trips, NF4 and FP4, blocksize 64 */
  for (int qt = KBIT_NF4; qt <= KBIT_FP4; qt++) {
    const char* name = qt == KBIT_NF4 ? "nf4" : "fp4";
    expect(q4(KBIT_F32, qt, a, absmax, codes, N, 64, NULL, THREADS) == KBIT_OK, "quantize_4bit");
    expect(q4(KBIT_F32, qt, a, absmax1, codes1, N, 64, NULL, 1) == KBIT_OK, "quantize_4bit, 1 thread");
    expect(memcmp(codes, codes1, (N + 1) / 2) == 0, "4-bit codes do not depend on the thread count");
    expect(dq4(KBIT_F32, qt, codes, absmax, back, N, 64, NULL, THREADS) == KBIT_OK, "dequantize_4bit");
    expect(dq4(KBIT_F32, qt, codes, absmax, back1, N, 64, NULL, 1) == KBIT_OK, "dequantize_4bit, 1 thread");
    expect(memcmp(back, back1, sizeof(float) * N) == 0, "4-bit dequantization does not depend on the thread count");
    printf("q4 %s packed %016llx absmax %016llx\n", name, (unsigned long long)fnv1a(codes, (N + 1) / 2),
           (unsigned long long)fnv1a(absmax, sizeof(float) * ((N + 63) / 64)));
    printf("dq4 %s %016llx\n", name, (unsigned long long)fnv1a(back, sizeof(float) * N));
  }

  /* gemv_4bit with the FP4 weight just quantized (its first rows), 3 rows of A: in_features 64 (x86-64: the
   * AVX-512 tiles where the CPU has them) and 70 (rows cut mid-block, the row-by-row copies with a scalar tail).
   * Its sums are one fused multiply-add per term in blockwise4.h's order on every platform and instruction set, so
   * the bytes must agree everywhere, and with 1 thread. */
  for (int64_t k = 64; k <= 70; k += 6) {
    float y[3 * 1000], y1[3 * 1000];
    expect(gemv(KBIT_F32, KBIT_FP4, a, codes, absmax, NULL, y, 3, 1000, k, 64, NULL, THREADS) == KBIT_OK,
           "gemv_4bit");
    expect(gemv(KBIT_F32, KBIT_FP4, a, codes, absmax, NULL, y1, 3, 1000, k, 64, NULL, 1) == KBIT_OK,
           "gemv_4bit, 1 thread");
    expect(memcmp(y, y1, sizeof y) == 0, "gemv_4bit does not depend on the thread count");
    printf("gemv fp4 1000x%d %016llx\n", (int)k, (unsigned long long)fnv1a(y, sizeof y));
  }

  /* gemv_4bit_t (G @ W, blockwise4.h's transposed order) with the same weight: 3 rows of G over its first 1000
   * rows, in_features 64 (the chunked tiles on x86-64) and 70 (the row path). The same bytes everywhere. */
  for (int64_t k = 64; k <= 70; k += 6) {
    float y[3 * 70], y1[3 * 70];
    expect(gemv_t(KBIT_F32, KBIT_FP4, a, codes, absmax, y, 3, 1000, k, 64, NULL, THREADS) == KBIT_OK, "gemv_4bit_t");
    expect(gemv_t(KBIT_F32, KBIT_FP4, a, codes, absmax, y1, 3, 1000, k, 64, NULL, 1) == KBIT_OK,
           "gemv_4bit_t, 1 thread");
    expect(memcmp(y, y1, sizeof(float) * 3 * k) == 0, "gemv_4bit_t does not depend on the thread count");
    printf("gemv_t fp4 1000x%d %016llx\n", (int)k, (unsigned long long)fnv1a(y, sizeof(float) * 3 * k));
  }

  /* a refused argument: a status and a message, never a crash */
  int status = q8(KBIT_F32, a, absmax, codes, N, 100, NULL, 1);
  printf("bad blocksize status %d\n", status);
  expect(status == KBIT_ERR_INVALID_ARGUMENT && last_error()[0] != '\0', "blocksize 100 is refused with a message");

  free(a);
  free(back);
  free(back1);
  free(codes);
  free(codes1);
  printf("%s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
