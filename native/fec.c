/*
 * restartpoint's FEC kernel over Intel ISA-L (libisal): the shard encode and rebuild of
 * src/fec/shard.ts in one native pass, on libuv's threadpool or synchronously.
 *
 * The code is the one @ronomon/reed-solomon computes, bit for bit (streams already written must
 * still decode, and nodes of both kinds interoperate). That library is not a byte-wise
 * GF(2^8) Reed-Solomon code: it is a Cauchy **bit-matrix** code. A shard of `shardSize` bytes
 * is cut into super-chunks of w packets of `chunk` bytes (w = 2, 4 or 8 per k+m; `chunk` from
 * the shard size, see chunk_size()), and parity packet (r, a) is the XOR of the data packets
 * (b, c) for which bit (r·w + a, b·w + c) of its bit matrix is set. So the whole code is
 * GF(2)-linear over packets: the parity is a 0/1 matrix times the data packets. This file
 * takes that bit matrix from the library's own `create(k, m)` context (w, k, m, then the
 * m·w × k·w bits), so the coefficients are the library's by construction, and:
 *
 * - computes parity packets as XORs (AVX2 when the CPU has it), fused block by block with the
 *   copy of the data slices into their shard messages and the CRC-32 of every slice while it is
 *   in cache;
 * - rebuilds missing data shards with the inverse, over GF(2), of the k·w × k·w 0/1 matrix of
 *   the present packets (invert_gf2), and the last missing shard by XOR with parity row 0 (all
 *   ones) when it is present, as the library does;
 * - checksums with a VPCLMULQDQ fold over 256-bit registers where the CPU has it, and ISA-L's
 *   crc32_gzip_refl (PCLMULQDQ, equal to zlib's crc32) for short pieces and the finish.
 *
 * Why not ISA-L's ec_encode_data / gf_invert_matrix: they work over GF(2^8) bytes. The
 * library's code can be fed to them only as a 0/1 matrix over packets, where ec_encode_data
 * spends two table shuffles per source and target per 32 bytes on what is a plain XOR here, and
 * gf_invert_matrix took ~140 ms for a 192 × 192 matrix (24+m) that invert_gf2 inverts in
 * microseconds. docs/fec.md has the measurements.
 *
 * N-API only (node_api.h), no C++.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <dlfcn.h>
#include <immintrin.h>
#include <isa-l/crc.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_K 24
#define MAX_M 6
#define MAX_W 8
#define MAX_PACKETS (MAX_K * MAX_W)
/* Bytes of every packet handled per step of the fused pass: a step's blocks stay in L1/L2
 * (2 KiB: 5.2 ms of CPU per 16 MiB 4+2 encode; 1 KiB 6.7 ms; 4 and 8 KiB 5.2-5.5 ms). */
#ifndef BLOCK
#define BLOCK 2048
#endif

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) return throw_last(env);                                                 \
  } while (0)

static napi_value throw_last(napi_env env) {
  const napi_extended_error_info* info = NULL;
  napi_get_last_error_info(env, &info);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
  }
  return NULL;
}

static napi_value throw_range(napi_env env, const char* message) {
  napi_throw_range_error(env, NULL, message);
  return NULL;
}

/*
 * ISA-L is loaded with dlopen(RTLD_DEEPBIND), not linked: the node binary exports a `gf_mul` of
 * its own (OpenSSL's curve448), and with ordinary linking libisal's internal calls to its
 * `gf_mul` (gf_invert_matrix, ec_init_tables) resolved to node's and crashed (seen here).
 * DEEPBIND makes the library bind its own symbols first, and a missing libisal.so.2 is a clear
 * error at load (the JS side then falls back) instead of a failed dlopen of the addon.
 */
static uint32_t (*isal_crc32_gzip_refl)(uint32_t, const unsigned char*, uint64_t);
static const char* isal_error = NULL;

static int load_isal(void) {
  void* lib = dlopen("libisal.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!lib) {
    isal_error = dlerror();
    return 0;
  }
  *(void**)&isal_crc32_gzip_refl = dlsym(lib, "crc32_gzip_refl");
  if (!isal_crc32_gzip_refl) {
    isal_error = "libisal.so.2 lacks crc32_gzip_refl";
    return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- XOR kernels */

typedef void (*xor_fn)(uint8_t* dst, const uint8_t* const* src, int n, size_t len);

static void xor_scalar(uint8_t* dst, const uint8_t* const* src, int n, size_t len) {
  size_t x = 0;
  for (; x + 8 <= len; x += 8) {
    uint64_t acc, v;
    memcpy(&acc, src[0] + x, 8);
    for (int s = 1; s < n; s++) {
      memcpy(&v, src[s] + x, 8);
      acc ^= v;
    }
    memcpy(dst + x, &acc, 8);
  }
  for (; x < len; x++) {
    uint8_t acc = src[0][x];
    for (int s = 1; s < n; s++) acc ^= src[s][x];
    dst[x] = acc;
  }
}

__attribute__((target("avx2"))) static void xor_avx2(uint8_t* dst, const uint8_t* const* src, int n,
                                                     size_t len) {
  size_t x = 0;
  for (; x + 128 <= len; x += 128) {
    const uint8_t* p = src[0] + x;
    __m256i a0 = _mm256_loadu_si256((const __m256i*)p);
    __m256i a1 = _mm256_loadu_si256((const __m256i*)(p + 32));
    __m256i a2 = _mm256_loadu_si256((const __m256i*)(p + 64));
    __m256i a3 = _mm256_loadu_si256((const __m256i*)(p + 96));
    for (int s = 1; s < n; s++) {
      p = src[s] + x;
      a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i*)p));
      a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i*)(p + 32)));
      a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i*)(p + 64)));
      a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i*)(p + 96)));
    }
    _mm256_storeu_si256((__m256i*)(dst + x), a0);
    _mm256_storeu_si256((__m256i*)(dst + x + 32), a1);
    _mm256_storeu_si256((__m256i*)(dst + x + 64), a2);
    _mm256_storeu_si256((__m256i*)(dst + x + 96), a3);
  }
  for (; x + 32 <= len; x += 32) {
    __m256i a = _mm256_loadu_si256((const __m256i*)(src[0] + x));
    for (int s = 1; s < n; s++) a = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i*)(src[s] + x)));
    _mm256_storeu_si256((__m256i*)(dst + x), a);
  }
  if (x < len) {
    const uint8_t* rest[MAX_PACKETS + 1];
    for (int s = 0; s < n; s++) rest[s] = src[s] + x;
    xor_scalar(dst + x, rest, n, len - x);
  }
}

static xor_fn xor_kernel = xor_scalar;
static const char* xor_name = "scalar";

/* ---------------------------------------------------------------- CRC-32 */

/*
 * The bulk of a CRC-32 by folding 256-bit lanes with VPCLMULQDQ (AVX2 registers), 128 bytes per
 * step: ISA-L 2.30's own VPCLMULQDQ code needs AVX-512, so on an AVX2 CPU it runs its 128-bit
 * PCLMULQDQ loop (crc32_gzip_refl_by8_02, ~10 GB/s of CPU here); this one measured 19-25 GB/s.
 * The classic method (Intel, "Fast CRC Computation Using PCLMULQDQ"): each 128-bit lane L is
 * carried 1024 bits forward as clmul(L.lo, x^(1024+32) mod P) ^ clmul(L.hi, x^(1024-32) mod P)
 * (bit-reflected, shifted left by 1) and XORed into the data 128 bytes later; the eight lanes
 * are then folded into one with the 128-bit constants. That lane is congruent to the bytes it
 * replaced, so ISA-L finishes the CRC over its 16 bytes and the tail. A test checks it against
 * zlib on every length to 5 000 and random ones, seeds included.
 */
#define FOLD256(x, d)                                                                                   \
  _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x, k, 0x00), _mm256_clmulepi64_epi128(x, k, 0x11)), d)

__attribute__((target("avx2,vpclmulqdq,pclmul"))) static uint32_t crc32_vpclmul(uint32_t crc, const uint8_t* buf,
                                                                              size_t len) {
  const __m256i k = _mm256_set_epi64x(0x14a7fe880, 0x1e88ef372, 0x14a7fe880, 0x1e88ef372);
  __m256i x0 = _mm256_loadu_si256((const __m256i*)buf);
  __m256i x1 = _mm256_loadu_si256((const __m256i*)(buf + 32));
  __m256i x2 = _mm256_loadu_si256((const __m256i*)(buf + 64));
  __m256i x3 = _mm256_loadu_si256((const __m256i*)(buf + 96));
  x0 = _mm256_xor_si256(x0, _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, (int)~crc));
  buf += 128;
  len -= 128;
  while (len >= 128) {
    x0 = FOLD256(x0, _mm256_loadu_si256((const __m256i*)buf));
    x1 = FOLD256(x1, _mm256_loadu_si256((const __m256i*)(buf + 32)));
    x2 = FOLD256(x2, _mm256_loadu_si256((const __m256i*)(buf + 64)));
    x3 = FOLD256(x3, _mm256_loadu_si256((const __m256i*)(buf + 96)));
    buf += 128;
    len -= 128;
  }
  const __m128i k128 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i lanes[8] = {_mm256_castsi256_si128(x0), _mm256_extracti128_si256(x0, 1),
                            _mm256_castsi256_si128(x1), _mm256_extracti128_si256(x1, 1),
                            _mm256_castsi256_si128(x2), _mm256_extracti128_si256(x2, 1),
                            _mm256_castsi256_si128(x3), _mm256_extracti128_si256(x3, 1)};
  __m128i acc = lanes[0];
  for (int i = 1; i < 8; i++) {
    acc = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(acc, k128, 0x00), _mm_clmulepi64_si128(acc, k128, 0x11)),
                        lanes[i]);
  }
  uint8_t folded[16];
  _mm_storeu_si128((__m128i*)folded, acc);
  /* The folded lane stands for the bytes so far with the seed applied: a CRC from register 0. */
  const uint32_t c = isal_crc32_gzip_refl(0xffffffffu, folded, 16);
  return len ? isal_crc32_gzip_refl(c, buf, (uint64_t)len) : c;
}

static int use_vpclmul = 0;

/* zlib's crc32(crc, buf, len): ISA-L's crc32_gzip_refl takes and returns the same values. */
static uint32_t crc32_update(uint32_t crc, const uint8_t* buf, size_t len) {
  if (len == 0) return crc;
  if (use_vpclmul && len >= 512) return crc32_vpclmul(crc, buf, len);
  return isal_crc32_gzip_refl(crc, (const unsigned char*)buf, (uint64_t)len);
}

/* zlib's crc32_combine, for the per-stripe CRCs of one shard (computed in parallel). */
#define POLY 0xedb88320u
static uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}
static uint32_t x2n_table[32];
static uint32_t x8nmodp(uint64_t n) {
  uint32_t p = 1u << 31;
  int k = 3;
  while (n) {
    if (n & 1) p = multmodp(x2n_table[k & 31], p);
    n >>= 1;
    k++;
  }
  return p;
}
static uint32_t crc32_combine_op(uint32_t crc1, uint32_t crc2, uint32_t op) {
  return multmodp(op, crc1) ^ crc2;
}

/* ---------------------------------------------------------------- GF(2) matrices */

#define WORDS (MAX_PACKETS / 64)
static void set_bit(uint64_t* row, int col) { row[col >> 6] |= 1ull << (col & 63); }
static int get_bit(const uint64_t* row, int col) { return (int)((row[col >> 6] >> (col & 63)) & 1); }

/*
 * Inverts the n × n matrix `a` over GF(2) (Gauss-Jordan on 64-bit words; `a` is destroyed).
 * Returns 0 when it is singular. A 0/1 matrix's inverse over GF(2) is also its inverse over
 * GF(2^8): the same answer ISA-L's gf_invert_matrix gives, about a thousand times faster for the
 * 192 × 192 matrices of 24+m codes (gf_invert_matrix took ~140 ms each here).
 */
static int invert_gf2(uint64_t a[][WORDS], uint64_t inv[][WORDS], int n) {
  for (int r = 0; r < n; r++) set_bit(inv[r], r);
  for (int c = 0; c < n; c++) {
    int p = c;
    while (p < n && !get_bit(a[p], c)) p++;
    if (p == n) return 0;
    if (p != c) {
      for (int w = 0; w < WORDS; w++) {
        uint64_t t = a[p][w];
        a[p][w] = a[c][w];
        a[c][w] = t;
        t = inv[p][w];
        inv[p][w] = inv[c][w];
        inv[c][w] = t;
      }
    }
    for (int r = 0; r < n; r++) {
      if (r == c || !get_bit(a[r], c)) continue;
      for (int w = 0; w < WORDS; w++) {
        a[r][w] ^= a[c][w];
        inv[r][w] ^= inv[c][w];
      }
    }
  }
  return 1;
}

/* ---------------------------------------------------------------- schedules */

/*
 * A schedule: the targets of one call, in order, each the XOR of its sources.
 * Layout (int16): count, then per target: shard, packet, n, then n × (shard, packet).
 * Shards are indexed 0..k+m-1 (data, then parity); a packet index is 0..w-1.
 */

/* ronomon's packet size for a shard of `size` bytes (its dot_chunk_size): the parity depends on it. */
static uint32_t chunk_size(int w, int k, uint32_t size) {
  uint32_t chunk = size / (uint32_t)w;
  while (chunk > 64 && chunk % 2 == 0 && (uint64_t)(1 + k * w) * chunk > 1048576) chunk /= 2;
  return chunk;
}

typedef struct {
  int w, k, m;
  const uint8_t* bits; /* m·w rows × k·w columns, row-major */
} code_t;

static int read_code(napi_env env, napi_value v, code_t* code) {
  uint8_t* ctx = NULL;
  size_t len = 0;
  if (napi_get_buffer_info(env, v, (void**)&ctx, &len) != napi_ok || len < 3) return 0;
  int w = ctx[0], k = ctx[1], m = ctx[2];
  if ((w != 2 && w != 4 && w != 8) || k < 1 || k > MAX_K || m < 1 || m > MAX_M) return 0;
  if (len != (size_t)(3 + k * w * m * w)) return 0;
  code->w = w;
  code->k = k;
  code->m = m;
  code->bits = ctx + 3;
  return 1;
}

/* plan(context, present, targets) → Buffer: the schedule that computes the `targets` shards
 * (bit i = shard i) from the `present` ones. Targets are parity shards (with every data shard
 * present: encode) or data shards (rebuild). */
static napi_value plan(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  code_t c;
  uint32_t present = 0, targets = 0;
  if (argc != 3 || !read_code(env, argv[0], &c) || napi_get_value_uint32(env, argv[1], &present) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &targets) != napi_ok) {
    return throw_range(env, "plan(context, present, targets): bad arguments");
  }
  const int k = c.k, m = c.m, w = c.w, kw = k * w, n = k + m;
  const uint32_t all = (1u << n) - 1, dataMask = (1u << k) - 1;
  if ((present & ~all) || (targets & ~all) || (present & targets) || targets == 0) {
    return throw_range(env, "plan: masks out of range or overlapping");
  }
  int16_t* out = malloc(sizeof(int16_t) * (1 + (size_t)n * w * (3 + 2 * kw)));
  if (!out) return throw_range(env, "plan: out of memory");
  size_t at = 1;
  int count = 0;
  if ((targets & dataMask) == 0) {
    if ((present & dataMask) != dataMask) {
      free(out);
      return throw_range(env, "plan: parity targets need every data shard");
    }
    for (int r = 0; r < m; r++) {
      if (!(targets & (1u << (k + r)))) continue;
      for (int a = 0; a < w; a++) {
        const uint8_t* row = c.bits + (size_t)(r * w + a) * kw;
        out[at++] = (int16_t)(k + r);
        out[at++] = (int16_t)a;
        size_t nAt = at++;
        int ns = 0;
        for (int col = 0; col < kw; col++) {
          if (!row[col]) continue;
          out[at++] = (int16_t)(col / w);
          out[at++] = (int16_t)(col % w);
          ns++;
        }
        out[nAt] = (int16_t)ns;
        count++;
      }
    }
  } else {
    if (targets & ~dataMask) {
      free(out);
      return throw_range(env, "plan: targets mix data and parity shards");
    }
    /* The first k present shards, in index order (as the library picks them). */
    int src[MAX_K], ns = 0;
    for (int i = 0; i < n && ns < k; i++)
      if (present & (1u << i)) src[ns++] = i;
    if (ns < k) {
      free(out);
      return throw_range(env, "plan: fewer than k present shards");
    }
    int missing[MAX_K], nm = 0;
    for (int i = 0; i < k; i++)
      if (targets & (1u << i)) missing[nm++] = i;
    /* Parity row 0 is all ones: the last missing shard is the XOR of every other data shard and
     * parity shard k, packet by packet, once the others are rebuilt. */
    int viaXor = (present & (1u << k)) ? missing[nm - 1] : -1;
    int useParity0 = 0;
    for (int b = 0; b < k; b++) useParity0 |= src[b] == k;
    if (viaXor >= 0 && !useParity0) viaXor = -1; /* parity k present but not among the first k */
    int dense = nm - (viaXor >= 0 ? 1 : 0);
    if (dense > 0) {
      /* Rows of the k·w packets of the chosen shards, as bit sets over the k·w data packets. */
      uint64_t a[MAX_PACKETS][MAX_PACKETS / 64], inv[MAX_PACKETS][MAX_PACKETS / 64];
      memset(a, 0, sizeof(a));
      memset(inv, 0, sizeof(inv));
      for (int b = 0; b < k; b++) {
        for (int p = 0; p < w; p++) {
          const int row = b * w + p;
          if (src[b] < k) {
            set_bit(a[row], src[b] * w + p);
          } else {
            const uint8_t* bits = c.bits + (size_t)((src[b] - k) * w + p) * kw;
            for (int col = 0; col < kw; col++)
              if (bits[col]) set_bit(a[row], col);
          }
        }
      }
      if (!invert_gf2(a, inv, kw)) {
        free(out);
        return throw_range(env, "plan: the present shards' matrix is singular (not a valid code)");
      }
      for (int t = 0; t < nm; t++) {
        int i = missing[t];
        if (i == viaXor) continue;
        for (int p = 0; p < w; p++) {
          const uint64_t* row = inv[i * w + p];
          out[at++] = (int16_t)i;
          out[at++] = (int16_t)p;
          size_t nAt = at++;
          int cnt = 0;
          for (int col = 0; col < kw; col++) {
            if (!get_bit(row, col)) continue;
            out[at++] = (int16_t)src[col / w];
            out[at++] = (int16_t)(col % w);
            cnt++;
          }
          out[nAt] = (int16_t)cnt;
          count++;
        }
      }
    }
    if (viaXor >= 0) {
      for (int p = 0; p < w; p++) {
        out[at++] = (int16_t)viaXor;
        out[at++] = (int16_t)p;
        out[at++] = (int16_t)k;
        for (int b = 0; b < k; b++) {
          out[at++] = (int16_t)(b == viaXor ? k : b);
          out[at++] = (int16_t)p;
        }
        count++;
      }
    }
  }
  out[0] = (int16_t)count;
  napi_value result;
  void* data = NULL;
  napi_status st = napi_create_buffer_copy(env, at * sizeof(int16_t), out, &data, &result);
  free(out);
  CHECK(st);
  return result;
}

/* ---------------------------------------------------------------- encode */

typedef struct {
  /* inputs */
  const int16_t* sched;
  int w, k, m;
  const uint8_t* part;
  uint64_t partLength;
  uint8_t* slab;
  uint64_t msgLen;
  uint32_t bodyAt, stripe, chunk, j0, j1;
  uint32_t* crcs; /* (k + m) × stripes, by shard then stripe */
  uint32_t stripes;
  int row0Xor;
  /* async */
  napi_ref refs[4];
  int nrefs;
  napi_ref callback;
  napi_async_work work;
} encode_job;

/* Whether parity row 0 of the code is all ones (the library refuses other matrices): then
 * parity shard k is the XOR of the data shards, packet by packet, and its CRC follows from
 * theirs. */
static int row0_is_xor(const code_t* c) {
  const int kw = c->k * c->w;
  for (int a = 0; a < c->w; a++)
    for (int col = 0; col < kw; col++)
      if (c->bits[(size_t)a * kw + col] != (col % c->w == a)) return 0;
  return 1;
}

/* crc32 of `len` zero bytes (seed 0). */
static uint32_t crc32_zeros(uint64_t len) {
  return len ? ~multmodp(x8nmodp(len), 0xffffffffu) : 0;
}

/*
 * For each unit of the range (a unit is one super-chunk of one stripe: unit u is super-chunk
 * u mod S of stripe u div S, S super-chunks per stripe), in blocks of BLOCK bytes of every
 * packet: copy the k·w data blocks into their messages (zero-padded past the part's end) and
 * checksum each while it is in L1, compute the m·w parity blocks from those copies (still in
 * L1) and checksum them. Checksums run per packet (each over its blocks in order) and are
 * joined per shard with crc32_combine into one CRC per shard and unit (crcs[shard · units + u]);
 * parity shard k's come from the data packets' (XOR).
 */
static void encode_run(encode_job* j) {
  const int k = j->k, m = j->m, n = k + m, w = j->w;
  const uint32_t chunk = j->chunk, super = (uint32_t)w * chunk;
  const uint64_t stripeBytes = (uint64_t)k * j->stripe;
  const uint32_t op = x8nmodp(chunk), zeros = (k % 2 == 0) ? crc32_zeros(chunk) : 0;
  const int16_t* sched = j->sched;
  const uint32_t supers = j->stripe / super, units = j->stripes * supers;
  uint8_t* base[MAX_K + MAX_M];
  const uint8_t* srcs[MAX_PACKETS + 1];
  for (uint32_t u = j->j0; u < j->j1; u++) {
    const uint32_t s = u / supers, sc = (u % supers) * super;
    for (int i = 0; i < n; i++) base[i] = j->slab + (uint64_t)i * j->msgLen + j->bodyAt + (uint64_t)s * j->stripe;
    const uint64_t start = s * stripeBytes;
    uint32_t crc[MAX_K + MAX_M] = {0};
    {
      uint32_t pk[MAX_K + MAX_M][MAX_W];
      memset(pk, 0, sizeof(pk));
      for (uint32_t o = 0; o < chunk; o += BLOCK) {
        const uint32_t len = chunk - o < BLOCK ? chunk - o : BLOCK;
        for (int b = 0; b < k; b++) {
          for (int c = 0; c < w; c++) {
            const uint32_t at = sc + (uint32_t)c * chunk + o;
            uint8_t* dst = base[b] + at;
            const uint64_t from = start + (uint64_t)b * j->stripe + at;
            const uint64_t have = from < j->partLength ? j->partLength - from : 0;
            const uint32_t copy = have < len ? (uint32_t)have : len;
            if (copy) memcpy(dst, j->part + from, copy);
            if (copy < len) memset(dst + copy, 0, len - copy);
            pk[b][c] = crc32_update(pk[b][c], dst, len);
          }
        }
        if (m == 0) continue;
        const int16_t* t = sched + 1;
        for (int d = 0; d < sched[0]; d++) {
          const int shard = t[0], pkt = t[1], ns = t[2];
          uint8_t* dst = base[shard] + sc + (uint32_t)pkt * chunk + o;
          t += 3;
          for (int q = 0; q < ns; q++, t += 2) srcs[q] = base[t[0]] + sc + (uint32_t)t[1] * chunk + o;
          xor_kernel(dst, srcs, ns, len);
          if (shard != k || !j->row0Xor) pk[shard][pkt] = crc32_update(pk[shard][pkt], dst, len);
        }
      }
      if (m > 0 && j->row0Xor) {
        for (int a = 0; a < w; a++) {
          uint32_t x = zeros;
          for (int b = 0; b < k; b++) x ^= pk[b][a];
          pk[k][a] = x;
        }
      }
      for (int i = 0; i < n; i++)
        for (int c = 0; c < w; c++) crc[i] = crc32_combine_op(crc[i], pk[i][c], op);
    }
    for (int i = 0; i < n; i++) j->crcs[(uint64_t)i * units + u] = crc[i];
  }
}

static void encode_execute(napi_env env, void* data) {
  (void)env;
  encode_run((encode_job*)data);
}

static void job_complete(napi_env env, napi_status status, napi_ref callback, napi_ref* refs, int nrefs,
                         napi_async_work work) {
  napi_value cb = NULL, global = NULL, arg = NULL;
  napi_get_reference_value(env, callback, &cb);
  napi_get_global(env, &global);
  if (status == napi_ok) {
    napi_get_null(env, &arg);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "FEC job cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &arg);
  }
  for (int i = 0; i < nrefs; i++) napi_delete_reference(env, refs[i]);
  napi_delete_reference(env, callback);
  napi_delete_async_work(env, work);
  if (cb) napi_call_function(env, global, cb, 1, &arg, NULL);
}

static void encode_complete(napi_env env, napi_status status, void* data) {
  encode_job* j = data;
  napi_ref cb = j->callback, refs[4];
  int nrefs = j->nrefs;
  memcpy(refs, j->refs, sizeof(refs));
  napi_async_work work = j->work;
  free(j);
  job_complete(env, status, cb, refs, nrefs, work);
}

static int get_bytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  napi_value ab;
  void* p = NULL;
  if (napi_get_typedarray_info(env, v, &type, &length, &p, &ab, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = p;
  *len = length;
  return p != NULL || length == 0;
}

static int get_u32(napi_env env, napi_value v, uint32_t* out) {
  return napi_get_value_uint32(env, v, out) == napi_ok;
}

/*
 * encode(plan, context, part, slab, crcs, [msgLen, bodyAt, stripe, stripes, j0, j1], callback|null)
 * - plan: the encode schedule (plan(context, dataMask, parityMask));
 * - slab: the k + m messages, `msgLen` bytes each, headers written, payloads at `bodyAt`;
 * - from, to: a range of units (super-chunks of stripes, see encode_run);
 * - crcs: Uint32Array of (k + m) × units: each unit's slice's CRC-32 (alone, seed 0);
 * - with a callback: runs on the threadpool, calls back (null | Error); none: runs here.
 */
static napi_value encode(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 7) return throw_range(env, "encode: expected 7 arguments");
  encode_job* j = calloc(1, sizeof(encode_job));
  if (!j) return throw_range(env, "encode: out of memory");
  code_t c;
  uint8_t *sched = NULL, *part = NULL, *slab = NULL;
  size_t schedLen = 0, partLen = 0, slabLen = 0;
  uint32_t* crcs = NULL;
  size_t crcLen = 0;
  napi_typedarray_type ct;
  napi_value ab;
  size_t off;
  void* crcp = NULL;
  bool isTa = false;
  uint32_t nums[6];
  napi_value arr = argv[5];
  int ok = napi_get_buffer_info(env, argv[0], (void**)&sched, &schedLen) == napi_ok && read_code(env, argv[1], &c) &&
           get_bytes(env, argv[2], &part, &partLen) && get_bytes(env, argv[3], &slab, &slabLen) &&
           napi_is_typedarray(env, argv[4], &isTa) == napi_ok && isTa &&
           napi_get_typedarray_info(env, argv[4], &ct, &crcLen, &crcp, &ab, &off) == napi_ok && ct == napi_uint32_array;
  for (uint32_t i = 0; ok && i < 6; i++) {
    napi_value e;
    ok = napi_get_element(env, arr, i, &e) == napi_ok && get_u32(env, e, &nums[i]);
  }
  if (!ok) {
    free(j);
    return throw_range(env, "encode: bad arguments");
  }
  crcs = crcp;
  j->sched = (const int16_t*)sched;
  j->w = c.w;
  j->k = c.k;
  j->m = c.m;
  j->part = part;
  j->partLength = partLen;
  j->slab = slab;
  j->msgLen = nums[0];
  j->bodyAt = nums[1];
  j->stripe = nums[2];
  j->stripes = nums[3];
  j->j0 = nums[4];
  j->j1 = nums[5];
  j->crcs = crcs;
  j->chunk = chunk_size(c.w, c.k, j->stripe);
  j->row0Xor = row0_is_xor(&c);
  const int n = c.k + c.m;
  /* Bounds: every slice written lies inside the slab, every CRC inside crcs. */
  const uint64_t units = j->stripe ? (uint64_t)j->stripes * (j->stripe / (c.w * j->chunk)) : 0;
  if (j->stripe == 0 || j->stripe % (uint32_t)(c.w) != 0 || j->stripe % (c.w * j->chunk) != 0 ||
      j->j0 > j->j1 || j->j1 > units || crcLen < (size_t)n * units ||
      (uint64_t)j->bodyAt + (uint64_t)j->stripes * j->stripe > j->msgLen || (uint64_t)n * j->msgLen > slabLen ||
      schedLen < 2 || (c.m > 0 && ((const int16_t*)sched)[0] != c.m * c.w)) {
    free(j);
    return throw_range(env, "encode: layout out of bounds");
  }
  bool isFn = false;
  napi_valuetype t;
  CHECK(napi_typeof(env, argv[6], &t));
  isFn = t == napi_function;
  if (!isFn) {
    encode_run(j);
    free(j);
    return NULL;
  }
  napi_value name;
  CHECK(napi_create_string_utf8(env, "restartpoint:fec-encode", NAPI_AUTO_LENGTH, &name));
  int idx[4] = {0, 2, 3, 4};
  for (int i = 0; i < 4; i++) CHECK(napi_create_reference(env, argv[idx[i]], 1, &j->refs[i]));
  j->nrefs = 4;
  CHECK(napi_create_reference(env, argv[6], 1, &j->callback));
  CHECK(napi_create_async_work(env, NULL, name, encode_execute, encode_complete, j, &j->work));
  CHECK(napi_queue_async_work(env, j->work));
  return NULL;
}

/* ---------------------------------------------------------------- rebuild */

typedef struct {
  const int16_t* sched;
  int w, k, m;
  const uint8_t* shard[MAX_K + MAX_M]; /* payloads, NULL when absent */
  uint8_t* out;                        /* k · payload bytes: the padded part */
  uint32_t stripe, chunk, j0, j1;
  napi_ref refs[MAX_K + MAX_M + 2];
  int nrefs;
  napi_ref callback;
  napi_async_work work;
} rebuild_job;

/* For each unit of the range (a super-chunk of a stripe, as in encode_run), in blocks of BLOCK
 * bytes of every packet: copy the present data blocks to their place in the part, then compute the missing ones from those
 * copies (in L1) and straight from the parity payloads (no copy of them). */
static void rebuild_run(rebuild_job* j) {
  const int k = j->k, m = j->m, n = k + m, w = j->w;
  const uint32_t chunk = j->chunk, super = (uint32_t)w * chunk;
  const int16_t* sched = j->sched;
  const uint32_t supers = j->stripe / super;
  uint8_t* base[MAX_K + MAX_M];
  const uint8_t* srcs[MAX_PACKETS + 1];
  for (uint32_t u = j->j0; u < j->j1; u++) {
    const uint32_t s = u / supers, sc = (u % supers) * super;
    for (int i = 0; i < n; i++) {
      if (i < k) {
        base[i] = j->out + ((uint64_t)s * k + i) * j->stripe;
      } else {
        base[i] = j->shard[i] ? (uint8_t*)j->shard[i] + (uint64_t)s * j->stripe : NULL;
      }
    }
    {
      for (uint32_t o = 0; o < chunk; o += BLOCK) {
        const uint32_t len = chunk - o < BLOCK ? chunk - o : BLOCK;
        for (int b = 0; b < k; b++) {
          if (!j->shard[b]) continue;
          for (int c = 0; c < w; c++) {
            const uint32_t at = sc + (uint32_t)c * chunk + o;
            memcpy(base[b] + at, j->shard[b] + (uint64_t)s * j->stripe + at, len);
          }
        }
        if (!sched) continue;
        const int16_t* t = sched + 1;
        for (int d = 0; d < sched[0]; d++) {
          uint8_t* dst = base[t[0]] + sc + (uint32_t)t[1] * chunk + o;
          const int ns = t[2];
          t += 3;
          for (int q = 0; q < ns; q++, t += 2) srcs[q] = base[t[0]] + sc + (uint32_t)t[1] * chunk + o;
          xor_kernel(dst, srcs, ns, len);
        }
      }
    }
  }
}

static void rebuild_execute(napi_env env, void* data) {
  (void)env;
  rebuild_run((rebuild_job*)data);
}

static void rebuild_complete(napi_env env, napi_status status, void* data) {
  rebuild_job* j = data;
  napi_ref cb = j->callback, refs[MAX_K + MAX_M + 2];
  int nrefs = j->nrefs;
  memcpy(refs, j->refs, sizeof(refs));
  napi_async_work work = j->work;
  free(j);
  job_complete(env, status, cb, refs, nrefs, work);
}

/*
 * rebuild(plan|null, context, shards[], out, [payload, stripe, j0, j1], callback|null)
 * - shards: k + m payloads (Uint8Array) or undefined; every present one `payload` bytes;
 * - plan: rebuild schedule for the missing data shards (null when none is missing);
 * - out: the part, k · payload bytes; present data slices are copied to it;
 * - from, to: a range of units (super-chunks of stripes, see encode_run).
 */
static napi_value rebuild(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 6) return throw_range(env, "rebuild: expected 6 arguments");
  rebuild_job* j = calloc(1, sizeof(rebuild_job));
  if (!j) return throw_range(env, "rebuild: out of memory");
  code_t c;
  uint8_t *sched = NULL, *out = NULL;
  size_t schedLen = 0, outLen = 0;
  napi_valuetype pt;
  uint32_t nums[4];
  int ok = read_code(env, argv[1], &c) && get_bytes(env, argv[3], &out, &outLen) &&
           napi_typeof(env, argv[0], &pt) == napi_ok;
  if (ok && pt != napi_null) ok = napi_get_buffer_info(env, argv[0], (void**)&sched, &schedLen) == napi_ok && schedLen >= 2;
  for (uint32_t i = 0; ok && i < 4; i++) {
    napi_value e;
    ok = napi_get_element(env, argv[4], i, &e) == napi_ok && get_u32(env, e, &nums[i]);
  }
  const uint32_t payload = ok ? nums[0] : 0;
  const int n = ok ? c.k + c.m : 0;
  uint32_t len = 0;
  ok = ok && napi_get_array_length(env, argv[2], &len) == napi_ok && len == (uint32_t)n;
  int present = 0;
  for (int i = 0; ok && i < n; i++) {
    napi_value e;
    napi_valuetype et;
    ok = napi_get_element(env, argv[2], (uint32_t)i, &e) == napi_ok && napi_typeof(env, e, &et) == napi_ok;
    if (!ok || et == napi_undefined) continue;
    uint8_t* p = NULL;
    size_t pl = 0;
    ok = get_bytes(env, e, &p, &pl) && pl == payload;
    j->shard[i] = p;
    present++;
  }
  if (!ok) {
    free(j);
    return throw_range(env, "rebuild: bad arguments");
  }
  j->sched = (const int16_t*)sched;
  j->w = c.w;
  j->k = c.k;
  j->m = c.m;
  j->out = out;
  j->stripe = nums[1];
  j->j0 = nums[2];
  j->j1 = nums[3];
  j->chunk = chunk_size(c.w, c.k, j->stripe);
  if (j->stripe == 0 || payload % j->stripe != 0 || j->stripe % (c.w * j->chunk) != 0 || j->j0 > j->j1 ||
      (uint64_t)j->j1 * c.w * j->chunk > payload || outLen < (uint64_t)c.k * payload || present < c.k) {
    free(j);
    return throw_range(env, "rebuild: layout out of bounds");
  }
  /* Every shard a schedule reads or writes must be there: written ones are data (in out), read
   * ones present. */
  if (sched) {
    const int16_t* t = j->sched + 1;
    const int16_t* end = (const int16_t*)(sched + schedLen);
    int written = 0;
    for (int d = 0; d < j->sched[0]; d++) {
      if (t + 3 > end || t[0] < 0 || t[0] >= c.k || t[1] < 0 || t[1] >= c.w || j->shard[t[0]]) goto bad;
      written |= 1 << t[0];
      int ns = t[2];
      t += 3;
      if (ns < 1 || ns > MAX_PACKETS || t + 2 * ns > end) goto bad;
      for (int s = 0; s < ns; s++, t += 2) {
        if (t[0] < 0 || t[0] >= n || t[1] < 0 || t[1] >= c.w) goto bad;
        if (!j->shard[t[0]] && !(written & (1 << t[0]))) goto bad;
      }
    }
  }
  for (int i = 0; i < c.k; i++) {
    if (!j->shard[i] && !sched) goto bad;
  }
  napi_valuetype t;
  CHECK(napi_typeof(env, argv[5], &t));
  if (t != napi_function) {
    rebuild_run(j);
    free(j);
    return NULL;
  }
  napi_value name;
  CHECK(napi_create_string_utf8(env, "restartpoint:fec-rebuild", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_reference(env, argv[2], 1, &j->refs[j->nrefs++]));
  CHECK(napi_create_reference(env, argv[3], 1, &j->refs[j->nrefs++]));
  if (sched) CHECK(napi_create_reference(env, argv[0], 1, &j->refs[j->nrefs++]));
  CHECK(napi_create_reference(env, argv[5], 1, &j->callback));
  CHECK(napi_create_async_work(env, NULL, name, rebuild_execute, rebuild_complete, j, &j->work));
  CHECK(napi_queue_async_work(env, j->work));
  return NULL;
bad:
  free(j);
  return throw_range(env, "rebuild: the schedule does not match the shards present");
}

/* ---------------------------------------------------------------- crc32 and the module */

/* crc32(bytes, seed) → zlib's crc32(seed, bytes). */
static napi_value crc32(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint8_t* p = NULL;
  size_t len = 0;
  uint32_t seed = 0;
  if (argc < 1 || !get_bytes(env, argv[0], &p, &len) || (argc > 1 && !get_u32(env, argv[1], &seed))) {
    return throw_range(env, "crc32(bytes: Uint8Array, seed?: number): bad arguments");
  }
  napi_value r;
  CHECK(napi_create_uint32(env, crc32_update(seed, p, len), &r));
  return r;
}

/* crc32Combine(crcA, crcB, lengthB) → zlib's crc32_combine. */
static napi_value crc32_combine_js(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t a = 0, b = 0;
  int64_t len = 0;
  if (argc != 3 || !get_u32(env, argv[0], &a) || !get_u32(env, argv[1], &b) ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok || len < 0) {
    return throw_range(env, "crc32Combine(a, b, lengthB): bad arguments");
  }
  napi_value r;
  CHECK(napi_create_uint32(env, crc32_combine_op(a, b, x8nmodp((uint64_t)len)), &r));
  return r;
}

/* joinCrcs(crcs, shards, units, unitBytes) → number[]: each shard's CRC-32 over its units in
 * order, from the per-unit CRCs encode() left (crc32_combine with one precomputed operator). */
static napi_value join_crcs(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool isTa = false;
  napi_typedarray_type type;
  size_t len = 0, off = 0;
  void* data = NULL;
  napi_value ab;
  uint32_t shards = 0, units = 0, unitBytes = 0;
  if (argc != 4 || napi_is_typedarray(env, argv[0], &isTa) != napi_ok || !isTa ||
      napi_get_typedarray_info(env, argv[0], &type, &len, &data, &ab, &off) != napi_ok || type != napi_uint32_array ||
      !get_u32(env, argv[1], &shards) || !get_u32(env, argv[2], &units) || !get_u32(env, argv[3], &unitBytes) ||
      units == 0 || (uint64_t)shards * units > len) {
    return throw_range(env, "joinCrcs(crcs: Uint32Array, shards, units, unitBytes): bad arguments");
  }
  const uint32_t* crcs = data;
  const uint32_t op = x8nmodp(unitBytes);
  napi_value out;
  CHECK(napi_create_array_with_length(env, shards, &out));
  for (uint32_t i = 0; i < shards; i++) {
    uint32_t crc = crcs[(uint64_t)i * units];
    for (uint32_t u = 1; u < units; u++) crc = crc32_combine_op(crc, crcs[(uint64_t)i * units + u], op);
    napi_value v;
    CHECK(napi_create_uint32(env, crc, &v));
    CHECK(napi_set_element(env, out, i, v));
  }
  return out;
}

/* chunkSize(w, k, shardSize): the library's packet size, exposed for tests. */
static napi_value chunk_size_js(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t w = 0, k = 0, s = 0;
  if (argc != 3 || !get_u32(env, argv[0], &w) || !get_u32(env, argv[1], &k) || !get_u32(env, argv[2], &s) ||
      w == 0 || s % w != 0) {
    return throw_range(env, "chunkSize(w, k, shardSize): bad arguments");
  }
  napi_value r;
  CHECK(napi_create_uint32(env, chunk_size((int)w, (int)k, s), &r));
  return r;
}

static napi_value init(napi_env env, napi_value exports) {
  if (!load_isal()) {
    napi_throw_error(env, "ERR_ISAL_MISSING", isal_error ? isal_error : "cannot load libisal.so.2");
    return NULL;
  }
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) {
    xor_kernel = xor_avx2;
    xor_name = "avx2";
    use_vpclmul = __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") &&
                  getenv("RESTARTPOINT_FEC_NO_VPCLMUL") == NULL;
  }
  uint32_t p = 1u << 30; /* x^1 */
  x2n_table[0] = p;
  for (int n = 1; n < 32; n++) x2n_table[n] = p = multmodp(p, p);
  napi_property_descriptor props[] = {
      {"plan", NULL, plan, NULL, NULL, NULL, napi_default, NULL},
      {"encode", NULL, encode, NULL, NULL, NULL, napi_default, NULL},
      {"rebuild", NULL, rebuild, NULL, NULL, NULL, napi_default, NULL},
      {"crc32", NULL, crc32, NULL, NULL, NULL, napi_default, NULL},
      {"crc32Combine", NULL, crc32_combine_js, NULL, NULL, NULL, napi_default, NULL},
      {"chunkSize", NULL, chunk_size_js, NULL, NULL, NULL, napi_default, NULL},
      {"joinCrcs", NULL, join_crcs, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return NULL;
  napi_value xn;
  if (napi_create_string_utf8(env, xor_name, NAPI_AUTO_LENGTH, &xn) != napi_ok) return NULL;
  napi_set_named_property(env, exports, "xor", xn);
  napi_value cn;
  if (napi_create_string_utf8(env, use_vpclmul ? "vpclmulqdq" : "isa-l", NAPI_AUTO_LENGTH, &cn) != napi_ok) return NULL;
  napi_set_named_property(env, exports, "crc", cn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
