#include "server/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->port = 5672;
    snprintf(cfg->bind, sizeof cfg->bind, "127.0.0.1");
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "./data");
    cfg->log_level = WLOG_INFO;
    cfg->channel_max = 2047;
    cfg->frame_max = 131072;
    cfg->heartbeat = 60;
    cfg->memory_limit_percent = 40;
}

int config_parse_memory_limit(struct config *cfg, const char *s)
{
    static const struct { const char *name; uint64_t factor; } units[] = {
        { "", 1 }, { "B", 1 },
        { "K", 1ull << 10 }, { "KiB", 1ull << 10 }, { "KB", 1000ull },
        { "M", 1ull << 20 }, { "MiB", 1ull << 20 }, { "MB", 1000000ull },
        { "G", 1ull << 30 }, { "GiB", 1ull << 30 }, { "GB", 1000000000ull },
        { "T", 1ull << 40 }, { "TiB", 1ull << 40 }, { "TB", 1000000000000ull },
    };
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    if (strcmp(end, "%") == 0) {
        if (v < 1 || v > 100)
            return -1;
        cfg->memory_limit_percent = (uint8_t)v;
        cfg->memory_limit_bytes = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].name) != 0)
            continue;
        if (v > UINT64_MAX / units[i].factor || v * units[i].factor < (1u << 20))
            return -1;
        cfg->memory_limit_bytes = v * units[i].factor;
        return 0;
    }
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: warren [--port N] [--bind ADDR] [--data DIR] [--log-level L] [--consumer-timeout MS]\n"
            "              [--memory-limit SIZE] [--help] [--version]\n"
            "  --port N        TCP port for AMQP clients (default 5672)\n"
            "  --bind ADDR     address to listen on (default 127.0.0.1)\n"
            "  --data DIR      data directory (default ./data)\n"
            "  --log-level L   error, warn, info or debug (default info)\n"
            "  --consumer-timeout MS  close (406) a channel holding a delivery unacked longer\n"
            "                  than MS milliseconds, so it returns to its queue (default 0: off)\n"
            "  --memory-limit SIZE  above this much message memory, publishers are blocked\n"
            "                  (connection.blocked \"low on memory\") until queues drain: N%% of\n"
            "                  RAM, or bytes with K, M, G, T (KiB...) or KB, MB, GB, TB\n"
            "                  (default 40%%)\n"
            "  --help          print this and exit\n"
            "  --version       print the version and exit\n");
}

static int parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == 0 || *end != 0 || v < min || v > max) {
        fprintf(stderr, "warren: %s needs a whole number from %ld to %ld, got '%s'\n", opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int config_parse_args(struct config *cfg, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(a, "--version") == 0) {
            printf("warren %s\n", WARREN_VERSION);
            return 1;
        }
        const char *val = NULL;
        if (strncmp(a, "--", 2) == 0 && strchr(a, '=')) {
            val = strchr(a, '=') + 1;
        } else if (i + 1 < argc) {
            val = argv[i + 1];
        }
        size_t namelen = strchr(a, '=') ? (size_t)(strchr(a, '=') - a) : strlen(a);
#define OPT(name) (namelen == strlen(name) && strncmp(a, name, namelen) == 0)
        if (!(OPT("--port") || OPT("--bind") || OPT("--data") || OPT("--log-level") || OPT("--consumer-timeout") ||
              OPT("--memory-limit"))) {
            fprintf(stderr, "warren: unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        if (!val) {
            fprintf(stderr, "warren: %s needs a value\n", a);
            return -1;
        }
        if (!strchr(a, '='))
            i++;
        if (OPT("--port")) {
            long v;
            if (parse_long("--port", val, 1, 65535, &v))
                return -1;
            cfg->port = (int)v;
        } else if (OPT("--consumer-timeout")) {
            long v;
            if (parse_long("--consumer-timeout", val, 0, 2147483647L, &v))
                return -1;
            cfg->consumer_timeout_ms = (uint32_t)v;
        } else if (OPT("--memory-limit")) {
            if (config_parse_memory_limit(cfg, val)) {
                fprintf(stderr, "warren: --memory-limit needs a share of RAM from 1%% to 100%% or a size "
                                "of at least 1 MiB (bytes, or with K, M, G, T, KiB, MiB, GiB, TiB, KB, MB, GB, TB), "
                                "got '%s'\n", val);
                return -1;
            }
        } else if (OPT("--bind")) {
            if (strlen(val) >= sizeof cfg->bind) {
                fprintf(stderr, "warren: --bind address too long\n");
                return -1;
            }
            snprintf(cfg->bind, sizeof cfg->bind, "%s", val);
        } else if (OPT("--data")) {
            if (strlen(val) >= sizeof cfg->data_dir || !*val) {
                fprintf(stderr, "warren: --data needs a directory path shorter than %zu bytes\n",
                        sizeof cfg->data_dir);
                return -1;
            }
            snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", val);
        } else if (OPT("--log-level")) {
            if (log_parse_level(val, &cfg->log_level)) {
                fprintf(stderr, "warren: --log-level must be error, warn, info or debug, got '%s'\n", val);
                return -1;
            }
        }
#undef OPT
    }
    return 0;
}
