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
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: warren [--port N] [--bind ADDR] [--data DIR] [--log-level L] [--consumer-timeout MS]\n"
            "              [--help] [--version]\n"
            "  --port N        TCP port for AMQP clients (default 5672)\n"
            "  --bind ADDR     address to listen on (default 127.0.0.1)\n"
            "  --data DIR      data directory (default ./data)\n"
            "  --log-level L   error, warn, info or debug (default info)\n"
            "  --consumer-timeout MS  close (406) a channel holding a delivery unacked longer\n"
            "                  than MS milliseconds, so it returns to its queue (default 0: off)\n"
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
        if (!(OPT("--port") || OPT("--bind") || OPT("--data") || OPT("--log-level") || OPT("--consumer-timeout"))) {
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
