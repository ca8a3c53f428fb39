#include "server/names.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static uint64_t fallback_state;

static void random_bytes(uint8_t *out, size_t n)
{
    if (getrandom(out, n, GRND_NONBLOCK) == (ssize_t)n)
        return;
    /* No entropy yet: a splitmix64 stream seeded by the clock keeps names unique enough. */
    if (fallback_state == 0)
        fallback_state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&fallback_state;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (fallback_state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        out[i] = (uint8_t)(z ^ (z >> 31));
    }
}

size_t names_generate(char *out, size_t size, const char *prefix)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t raw[16];
    random_bytes(raw, sizeof raw);
    size_t n = (size_t)snprintf(out, size, "%s", prefix);
    uint32_t acc = 0;
    int bits = 0;
    size_t emitted = 0;
    for (size_t i = 0; i < sizeof raw && n + 1 < size; i++) {
        acc = (acc << 8) | raw[i];
        bits += 8;
        while (bits >= 6 && n + 1 < size) {
            bits -= 6;
            out[n++] = alphabet[(acc >> bits) & 63];
            emitted++;
        }
    }
    if (bits > 0 && n + 1 < size && emitted < NAMES_RANDOM_LEN)
        out[n++] = alphabet[(acc << (6 - bits)) & 63];
    out[n] = 0;
    return n;
}
